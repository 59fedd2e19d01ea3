"""Candidate layouts of a config on N devices, each checked by the config validator
(`validate_config` with the world size) before it is costed, and the ranking."""

from __future__ import annotations

import copy
import dataclasses

from ..config import ConfigError, ModelConfig, validate_config
from ..train.metrics import flops_per_token
from .compose import Plan, compose
from .hardware import Hardware
from .shapes import Features, Layout, ModelShape, recompute_of

TP = (1, 2, 4, 8, 16)
PP = (1, 2, 4, 8, 16, 32, 64)
VPP = (1, 2, 3, 4)
MBS = (1, 2, 4, 8)


def recompute_choices() -> tuple[str, ...]:
    """What `model.recompute` can say in this engine: a bool today (full block checkpointing or
    none); the string form with `selective` once it exists."""
    return ("none", "selective", "full") if isinstance(ModelConfig().recompute, str) else ("none", "full")


def _recompute_value(choice: str):
    return choice if isinstance(ModelConfig().recompute, str) else choice == "full"


def with_layout(cfg, lay: Layout):
    """A copy of `cfg` with the layout's fields set."""
    trial = copy.copy(cfg)
    trial.parallel = dataclasses.replace(
        cfg.parallel,
        tp=lay.tp,
        pp=lay.pp,
        vpp=lay.vpp,
        dp=None,
        sequence_parallel=lay.sp,
        distributed_optimizer=lay.dist_opt,
    )
    trial.train = dataclasses.replace(cfg.train, micro_batch_size=lay.mbs)
    trial.model = dataclasses.replace(cfg.model, recompute=_recompute_value(lay.recompute))
    return trial


def candidates(cfg, gpus: int, hw: Hardware, base: bool = False) -> tuple[list[tuple[Layout, object]], dict]:
    """Every layout the validator accepts (and with tp inside a node), plus counts of the rejected
    ones by reason. `base`: only the config's own layout."""
    rejected: dict[str, int] = {}
    out = []
    par, t = cfg.parallel, cfg.train
    if base:
        grid = [
            (
                par.tp,
                par.pp,
                par.vpp,
                par.sequence_parallel,
                par.distributed_optimizer,
                t.micro_batch_size,
                recompute_of(cfg.model),
            )
        ]
    else:
        grid = [
            (tp, pp, vpp, sp, zero, mbs, rc)
            for tp in TP
            for pp in PP
            for vpp in VPP
            for sp in (False, True)
            for zero in (False, True)
            for mbs in MBS
            for rc in recompute_choices()
        ]
    for tp, pp, vpp, sp, zero, mbs, rc in grid:
        if gpus % (tp * pp) or (vpp > 1 and pp == 1) or (sp and tp == 1):
            continue  # not a grid of this world / not a distinct layout
        dp = gpus // (tp * pp)
        if zero and dp == 1:
            continue  # the distributed optimizer over one replica is the replicated one
        if tp > hw.gpus_per_node and not base:
            rejected["tp larger than a node"] = rejected.get("tp larger than a node", 0) + 1
            continue
        lay = Layout(tp, pp, vpp, dp, sp, zero, mbs, rc, par.order)
        trial = with_layout(cfg, lay)
        try:
            validate_config(trial, gpus)
        except ConfigError as e:
            field = str(e).split(":")[1].strip() if ":" in str(e) else str(e)
            rejected[field] = rejected.get(field, 0) + 1
            continue
        out.append((lay, trial))
    return out, rejected


def device_of(hw: Hardware) -> str:
    return "cpu" if hw.key == "cpu" else "cuda"


def plan_one(cfg, lay: Layout, hw: Hardware, features: Features | None = None, limit: float | None = None) -> Plan:
    """One layout of `cfg`, simulated (or its bound beyond `limit`)."""
    trial = with_layout(cfg, lay)
    feat = features or Features.from_config(trial, device_of(hw))
    fpt = flops_per_token(cfg.model.resolve(), cfg.data.seq_length)
    model = ModelShape.from_config(cfg.model)
    return compose(
        model, lay, feat, hw, cfg.data.seq_length, cfg.train.global_batch_size, model_flops_per_token=fpt, limit=limit
    )


def plan_layouts(
    cfg, gpus: int, hw: Hardware, features: Features | None = None, base: bool = False, exact: int = 20
) -> tuple[list[Plan], dict]:
    """Every valid layout costed, best first (layouts that fit before those that do not). Lower
    bounds come first (compute and the pipeline's fill and drain, no simulation); layouts are then
    simulated in that order until a bound exceeds the `exact`-th best simulated step, so the best
    `exact` are ranked exactly and the others carry their bound (`Plan.exact` False)."""
    cands, rejected = candidates(cfg, gpus, hw, base)

    def run(lay, trial, limit):
        return plan_one(cfg, lay, hw, features, limit)

    bounds = [(run(lay, trial, 0.0), lay, trial) for lay, trial in cands]
    bounds.sort(key=lambda x: (not x[0].fits, x[0].step_s))
    plans, best = [], []
    for b, lay, trial in bounds:
        limit = best[exact - 1] if len(best) >= exact else None
        skip = limit is not None and (b.step_s > limit or not b.fits)
        p = b if skip else run(lay, trial, limit)
        if p.exact and p.fits:
            best = sorted([*best, p.step_s])
        plans.append(p)
    plans.sort(key=lambda p: (not p.fits, not p.exact, p.step_s, p.layout.tp * p.layout.pp, p.layout.vpp))
    return plans, rejected


def total_tokens(cfg) -> tuple[int, int]:
    """(optimizer steps, tokens) of the config's whole run: every phase."""
    per_step = cfg.train.global_batch_size * cfg.data.seq_length
    steps = 0
    for ph in cfg.data.phases:
        steps += ph.steps if ph.steps is not None else -(-ph.tokens // per_step)
    if not cfg.data.phases and cfg.train.max_steps:
        steps = cfg.train.max_steps
    return steps, steps * per_step
