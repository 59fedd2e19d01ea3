"""A long run that saves only at its end loses everything to one crash: such a run gets a warning at start.

`expected_over_an_hour` decides what "long" is: the planner's step time for the config's own layout on
the device the run has (a GPU the hardware table knows by its CUDA name, or the table's `cpu` entry for a
CPU run), formula costs only (cheap: no rehearsal at start-up), times the steps. Where the planner has
no estimate (a device the table does not know, the meta device of a rehearsal, a layout it refuses) it
is a step count: LONG_RUN_STEPS.
"""

from __future__ import annotations

import torch

from ..config import Config
from .lr_schedule import Schedule
from .phase_policy import save_interval

LONG_RUN_STEPS = 1_000
HOUR_S = 3600.0


def hardware_key(device: torch.device | None) -> str | None:
    """The hardware table entry of the device a run trains on (None: unknown)."""
    if device is None or device.type not in ("cpu", "cuda"):
        return None
    if device.type == "cpu":
        return "cpu"
    from ..hardware_table import match_device

    return match_device(torch.cuda.get_device_name(device))


def estimated_step_seconds(cfg: Config, world: int, device: torch.device | None) -> float | None:
    """The planner's step time of `cfg`'s own layout on `world` devices like `device` (formula costs),
    or None where it has none. Never raises: an estimate must not stop a run."""
    key = hardware_key(device)
    if key is None:
        return None
    try:
        from ..planner import hardware
        from ..planner.search import candidates, plan_one

        hw = hardware.get(key)
        cands, _ = candidates(cfg, world, hw, base=True)
        if not cands:
            return None
        return plan_one(cfg, cands[0][0], hw).step_s
    except Exception:  # a warning's estimate: the run goes on with the step-count rule
        return None


def expected_over_an_hour(cfg: Config, steps: int, world: int = 1, device: torch.device | None = None) -> bool:
    """Whether `steps` optimizer steps of `cfg` on `world` ranks of `device` are expected to take more
    than an hour: the planner's estimate where it has one, else `steps >= LONG_RUN_STEPS`."""
    return _expected(cfg, steps, world, device)[0]


def _expected(cfg: Config, steps: int, world: int, device) -> tuple[bool, str]:
    est = estimated_step_seconds(cfg, world, device)
    if est is None:
        return steps >= LONG_RUN_STEPS, f"{steps} steps"
    return steps * est > HOUR_S, f"{steps} steps, ~{steps * est / HOUR_S:,.1f} h by the planner's estimate"


def first_save_before_end(schedule: Schedule, default_interval: int, start: int, total: int) -> int | None:
    """The first step after `start` and before `total` at which the run checkpoints (phase_policy.save_due:
    every N steps of a phase and at its end), or None: it saves only at its end."""
    for sp in schedule.spans:
        n = save_interval(schedule.phases[sp.index], default_interval)
        done = max(start - sp.start_step, 0)  # steps of this phase already behind us
        if n <= 0 or done >= sp.steps:
            continue
        step = sp.start_step + min((done // n + 1) * n, sp.steps)
        if start < step < total:
            return step
    return None


def end_only_save_warning(
    cfg: Config, schedule: Schedule, start: int, total: int, world: int = 1, device: torch.device | None = None
) -> str | None:
    """The start-up warning for a long run (from `start` to `total`, on `world` ranks of `device`) that
    would checkpoint only at its end."""
    steps = total - start
    long, why = _expected(cfg, steps, world, device)
    if not long:
        return None
    if first_save_before_end(schedule, cfg.train.save_interval, start, total) is not None:
        return None
    hint = max(1, min(1000, steps // 10))
    return (
        f"this run checkpoints only at its end (train.save_interval={cfg.train.save_interval}, no phase "
        f"save_interval) and is expected to run over an hour ({why}): a crash before then loses all "
        f"of it; set train.save_interval (e.g. {hint}) or data.phases[].save_interval"
    )
