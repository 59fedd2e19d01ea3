"""Candidate layouts of a config on N devices, each checked by the config validator
(`validate_config` with the world size) before it is costed, and the ranking."""

from __future__ import annotations

import copy
import dataclasses

from ..config import ConfigError, ModelConfig, validate_config
from ..model.flops import flops_per_token
from .compose import Plan, compose
from .costs import FORMULA, CostSource
from .hardware import Hardware
from .shapes import Features, Layout, ModelShape, recompute_of

TP = (1, 2, 4, 8, 16)
PP = (1, 2, 4, 8, 16, 32, 64)
VPP = (1, 2, 3, 4)
MBS = (1, 2, 4, 8)
CP = (1, 2, 4, 8, 16)
# Context parallelism is a candidate while every cp rank keeps at least this many tokens of a sequence:
# below it a ring hop's K/V transfer outlasts a block's compute on NVLink (docs/parallelism.md, "Cost"),
# so cp only adds communication (the Crystal recipe's 2k sequences get no cp candidates).
MIN_CP_TOKENS = 2048


def cp_choices(seq: int) -> tuple[int, ...]:
    return tuple(c for c in CP if c == 1 or seq // c >= MIN_CP_TOKENS)


def recompute_choices() -> tuple[str, ...]:
    """What `model.recompute` can say in this engine: a bool today (full block checkpointing or
    none); the string form with `selective` once it exists."""
    return ("none", "selective", "full") if isinstance(ModelConfig().recompute, str) else ("none", "full")


def recompute_value(choice: str):
    return choice if isinstance(ModelConfig().recompute, str) else choice == "full"


def with_layout(cfg, lay: Layout):
    """A copy of `cfg` with the layout's fields set."""
    trial = copy.copy(cfg)
    trial.parallel = dataclasses.replace(
        cfg.parallel,
        tp=lay.tp,
        cp=lay.cp,
        pp=lay.pp,
        vpp=lay.vpp,
        dp=None,
        sequence_parallel=lay.sp,
        distributed_optimizer=lay.dist_opt,
    )
    trial.train = dataclasses.replace(cfg.train, micro_batch_size=lay.mbs)
    trial.model = dataclasses.replace(cfg.model, recompute=recompute_value(lay.recompute))
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
                par.cp,
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
            (tp, cp, pp, vpp, sp, zero, mbs, rc)
            for tp in TP
            for cp in cp_choices(cfg.data.seq_length)
            for pp in PP
            for vpp in VPP
            for sp in (False, True)
            for zero in (False, True)
            for mbs in MBS
            for rc in recompute_choices()
        ]
    for tp, cp, pp, vpp, sp, zero, mbs, rc in grid:
        if gpus % (tp * cp * pp) or (vpp > 1 and pp == 1) or (sp and tp == 1):
            continue  # not a grid of this world / not a distinct layout
        dp = gpus // (tp * cp * pp)
        if zero and dp * cp == 1:
            if not base:
                continue  # the distributed optimizer over one replica is the replicated one
            zero = False  # the config's own layout: costed as what it is
        if tp > hw.gpus_per_node and not base:
            rejected["tp larger than a node"] = rejected.get("tp larger than a node", 0) + 1
            continue
        lay = Layout(tp, pp, vpp, dp, sp, zero, mbs, rc, par.order, cp)
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


def plan_one(
    cfg,
    lay: Layout,
    hw: Hardware,
    features: Features | None = None,
    limit: float | None = None,
    source: CostSource = FORMULA,
) -> Plan:
    """One layout of `cfg`, simulated (or its bound beyond `limit`), its records from `source`."""
    trial = with_layout(cfg, lay)
    feat = features or Features.from_config(trial, device_of(hw))
    fpt = flops_per_token(cfg.model.resolve(), cfg.data.seq_length)
    model = ModelShape.from_config(cfg.model)
    return compose(
        model,
        lay,
        feat,
        hw,
        cfg.data.seq_length,
        cfg.train.global_batch_size,
        source=source,
        model_flops_per_token=fpt,
        limit=limit,
    )


def recompute_choices_of(cfg, lay: Layout, hw: Hardware, source: CostSource = FORMULA) -> list[dict]:
    """The layout under each `model.recompute` choice: the activations it keeps on the fullest rank,
    its memory per device, whether it fits, its step time. What recomputation saves, and what it costs."""
    out = []
    for rc in recompute_choices():
        try:
            p = plan_one(cfg, dataclasses.replace(lay, recompute=rc), hw, source=source)
        except (ValueError, ConfigError) as e:
            out.append(dict(recompute=rc, error=str(e).splitlines()[0]))
            continue
        out.append(
            dict(
                recompute=rc,
                activations_bytes=p.memory.get("activations", 0.0),
                memory_bytes=p.memory_bytes,
                fits=p.fits,
                step_s=p.step_s,
                current=rc == lay.recompute,
            )
        )
    return out


def recompute_text(rows: list[dict], source_note: str = "") -> list[str]:
    lines = [f"recompute choices of this layout (activations and memory per GPU, fullest rank{source_note}):"]
    base = next((r for r in rows if r["recompute"] == "none" and "error" not in r), None)
    for r in rows:
        mark = "*" if r.get("current") else " "
        if "error" in r:
            lines.append(f" {mark} {r['recompute']:<10} not valid here: {r['error']}")
            continue
        saved = ""
        if base is not None and r is not base:
            saved = f"  saves {(base['activations_bytes'] - r['activations_bytes']) / 1e9:6.2f} GB"
        lines.append(
            f" {mark} {r['recompute']:<10} activations {r['activations_bytes'] / 1e9:7.2f} GB  "
            f"memory {r['memory_bytes'] / 1e9:7.2f} GB  {'fits' if r['fits'] else 'does not fit':<12} "
            f"step {r['step_s']:.3f} s{saved}"
        )
    return lines


# A layout whose formula memory is within this share beyond the usable memory may still fit once the
# rehearsal measures it: it is simulated (and rehearsed) rather than ruled out by the formula.
FIT_MARGIN = 0.10


def plan_layouts(
    cfg,
    gpus: int,
    hw: Hardware,
    features: Features | None = None,
    base: bool = False,
    exact: int = 20,
    source: CostSource = FORMULA,
) -> tuple[list[Plan], dict]:
    """Every valid layout costed, best first (layouts that fit before those that do not). Lower
    bounds come first (compute and the pipeline's fill and drain, no simulation, from the formula);
    layouts are then simulated with `source` in that order until a bound exceeds the `exact`-th best
    simulated step, so the best `exact` are ranked exactly and the others carry their bound and the
    formula's memory (`Plan.exact` False)."""
    cands, rejected = candidates(cfg, gpus, hw, base)
    margin = FIT_MARGIN if source is not FORMULA else 0.0

    def maybe_fits(p: Plan) -> bool:
        return p.memory_bytes <= hw.usable_bytes * (1 + margin)

    bounds = [(plan_one(cfg, lay, hw, features, 0.0), lay, trial) for lay, trial in cands]
    bounds.sort(key=lambda x: (not maybe_fits(x[0]), x[0].step_s))
    plans, best = [], []
    for b, lay, _trial in bounds:
        limit = best[exact - 1] if len(best) >= exact else None
        skip = limit is not None and (b.step_s > limit or not maybe_fits(b))
        p = b if skip else plan_one(cfg, lay, hw, features, limit, source)
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
