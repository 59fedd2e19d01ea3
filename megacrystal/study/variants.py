"""Curriculum variants of a base run config, all with the same tokens per source.

From the base config's phases (Crystal's: language-heavy, then code-heavy with FIM):
  crystal      the base phases as they are
  mixed        one phase with every source's total, i.e. the token-weighted average blend
  sequential   all natural-language samples first, then all code (the forgetting baseline)
  reversed     the base phases in the opposite order
Samples per source and phase are whole global batches: each phase's steps are apportioned to its
sources by their weights (largest remainder), so every source's total is a whole number of batches
and the blends (given as sample counts) are realised exactly. Sources the data plan leaves out (empty
optional ones) are dropped first. FIM: the crystal and reversed variants keep each phase's rate;
mixed and sequential give their code the same overall FIM share (the base phases' rates weighted by
their code samples). Learning-rate settings go by position: the k-th phase of every variant takes
the base's k-th phase's lr, min_lr, warmup, decay (the last one for phases beyond the base's count).
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction

from ..config import Config, ConfigError, PhaseConfig

VARIANTS = ("crystal", "mixed", "sequential", "reversed")
LR_FIELDS = ("lr", "min_lr", "warmup_steps", "decay_steps", "decay_style")


def _apportion(total: int, weights: dict[str, float]) -> dict[str, int]:
    """`total` units split by `weights` (largest remainder, ties by name)."""
    exact = {k: Fraction(repr(float(w))) for k, w in weights.items()}  # 0.35 is 35/100, not a binary float
    s = sum(exact.values())
    raw = {k: total * w / s for k, w in exact.items()}
    out = {k: math.floor(v) for k, v in raw.items()}
    left = total - sum(out.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - out[k]), k))[:left]:
        out[k] += 1
    return out


def phase_counts(cfg: Config, plan=None) -> list[dict[str, int]]:
    """Samples per source for each base phase (multiples of the global batch)."""
    g = cfg.train.global_batch_size
    out = []
    for i, ph in enumerate(cfg.data.phases):
        if ph.steps is None:
            where = f"{cfg.source_file}: " if cfg.source_file else ""
            raise ConfigError(f"{where}data.phases[{i}] ({ph.name}): the study needs phase lengths in steps")
        active = set(plan.phases[i].sources) if plan is not None else None
        w = {s: v for s, v in ph.blend.items() if v > 0 and (active is None or s in active)}
        units = _apportion(int(ph.steps), w)
        out.append({s: n * g for s, n in units.items() if n > 0})
    return out


def _lr(cfg: Config, k: int) -> dict:
    base = cfg.data.phases[min(k, len(cfg.data.phases) - 1)]
    return {f: getattr(base, f) for f in LR_FIELDS}


def _phase(cfg: Config, k: int, name: str, counts: dict[str, int], fim: float, spm: float) -> PhaseConfig:
    g = cfg.train.global_batch_size
    return PhaseConfig(
        name=name,
        steps=sum(counts.values()) // g,
        blend={s: float(n) for s, n in counts.items()},
        fim_rate=fim,
        fim_spm_rate=spm,
        **_lr(cfg, k),
    )


def derive_phases(cfg: Config, variant: str, plan=None) -> list[PhaseConfig]:
    """The phases of `variant` (one of VARIANTS) built from `cfg`'s phases."""
    counts = phase_counts(cfg, plan)
    base = cfg.data.phases
    kinds = {n: s.kind for n, s in cfg.data.sources.items()}
    code = [sum(n for s, n in c.items() if kinds[s] == "code") for c in counts]
    code_total = sum(code)
    fim = sum(p.fim_rate * c for p, c in zip(base, code, strict=True)) / code_total if code_total else 0.0
    spm_w = sum(p.fim_rate * c for p, c in zip(base, code, strict=True))
    spm = sum(p.fim_spm_rate * p.fim_rate * c for p, c in zip(base, code, strict=True)) / spm_w if spm_w else 0.5
    if variant == "crystal":
        return [
            _phase(cfg, k, p.name, c, p.fim_rate, p.fim_spm_rate)
            for k, (p, c) in enumerate(zip(base, counts, strict=True))
        ]
    if variant == "reversed":
        order = list(reversed(range(len(base))))
        return [
            _phase(cfg, k, base[i].name, counts[i], base[i].fim_rate, base[i].fim_spm_rate) for k, i in enumerate(order)
        ]
    total: dict[str, int] = {}
    for c in counts:
        for s, n in c.items():
            total[s] = total.get(s, 0) + n
    if variant == "mixed":
        return [_phase(cfg, 0, "mixed", total, fim, spm)]
    if variant == "sequential":
        nl = {s: n for s, n in total.items() if kinds[s] != "code"}
        cd = {s: n for s, n in total.items() if kinds[s] == "code"}
        phases = []
        if nl:
            phases.append(_phase(cfg, 0, "language_only", nl, 0.0, 0.5))
        if cd:
            phases.append(_phase(cfg, len(phases), "code_only", cd, fim, spm))
        return phases
    raise ConfigError(f"study variant {variant!r}: expected one of {list(VARIANTS)}")


def variant_config(cfg: Config, variant: str, plan=None) -> Config:
    """A copy of `cfg` whose phases are `variant`'s."""
    out = copy.deepcopy(cfg)
    out.data.phases = derive_phases(cfg, variant, plan)
    return out


def source_totals(phases: list[PhaseConfig], global_batch_size: int) -> dict[str, int]:
    """Samples per source summed over phases, from the count-valued blends."""
    out: dict[str, int] = {}
    for p in phases:
        w = sum(p.blend.values())
        for s, v in p.blend.items():
            out[s] = out.get(s, 0) + round(v / w * p.steps * global_batch_size)
    return out
