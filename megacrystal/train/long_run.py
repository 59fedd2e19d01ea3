"""A long run that saves only at its end loses everything to one crash: such a run gets a warning at start.

`expected_over_an_hour` decides what "long" is. Until the planner estimates a config's step time it is a
step count (LONG_RUN_STEPS); it is the one function the planner replaces.
"""

from __future__ import annotations

from ..config import Config
from .lr_schedule import Schedule
from .phase_policy import save_interval

LONG_RUN_STEPS = 1_000


def expected_over_an_hour(cfg: Config, steps: int) -> bool:
    """Whether `steps` optimizer steps of `cfg` are expected to take more than an hour (today: >= 1,000
    steps, whatever the config; the planner's step-time estimate will decide instead)."""
    return steps >= LONG_RUN_STEPS


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


def end_only_save_warning(cfg: Config, schedule: Schedule, start: int, total: int) -> str | None:
    """The start-up warning for a long run (from `start` to `total`) that would checkpoint only at its end."""
    steps = total - start
    if not expected_over_an_hour(cfg, steps):
        return None
    if first_save_before_end(schedule, cfg.train.save_interval, start, total) is not None:
        return None
    hint = max(1, min(1000, steps // 10))
    return (
        f"this run checkpoints only at its end (train.save_interval={cfg.train.save_interval}, no phase "
        f"save_interval) and is expected to run over an hour ({steps} steps): a crash before then loses all "
        f"of it; set train.save_interval (e.g. {hint}) or data.phases[].save_interval"
    )
