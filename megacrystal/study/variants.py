"""Curriculum variants of a base run config, all with the same tokens per source and the same
expected number of FIM samples per source.

From the base config's phases (Crystal's: language-heavy, then code-heavy with FIM):
  crystal      the base phases as they are
  mixed        one phase with every source's total, i.e. the token-weighted average blend
  sequential   all natural-language samples first, then all code (the forgetting baseline)
  reversed     the base phases in the opposite order
Samples per source and phase are whole global batches: each phase's steps are apportioned to its
blend entries by their weights (largest remainder, exact decimal weights), so every total is a whole
number of batches and the blends (written as sample counts) are realised exactly. Entries the data
plan leaves out (empty optional sources) are dropped first; a replay entry counts as samples of the
source it replays (the variants compare orders of the same data, so nothing is replayed).
FIM is written per blend entry (the entry's effective rate: its own, else the phase's for sources
with `fim: true`, else 0): crystal and reversed keep each phase's rates; mixed and sequential give
each source its rate averaged over the base phases by samples, so its expected FIM samples stay the
same. Learning-rate settings go by position: the k-th phase of every variant takes the base's k-th
phase's lr, min_lr, warmup, decay (the last base phase's for phases beyond the base's count).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from fractions import Fraction

from ..config import Config, ConfigError, PhaseConfig
from ..config.schema import BlendEntry

VARIANTS = ("crystal", "mixed", "sequential", "reversed")
LR_FIELDS = ("lr", "min_lr", "warmup_steps", "decay_steps", "decay_style")


@dataclass
class Share:
    """One source's samples in one phase and their FIM rates."""

    samples: int
    fim_rate: float = 0.0
    fim_spm_rate: float = 0.5

    def add(self, other: Share) -> Share:
        n = self.samples + other.samples
        fim = self.fim_rate * self.samples + other.fim_rate * other.samples
        spm = self.fim_spm_rate * self.fim_rate * self.samples + other.fim_spm_rate * other.fim_rate * other.samples
        return Share(n, fim / n if n else 0.0, spm / fim if fim else 0.5)


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


def phase_shares(cfg: Config, plan=None) -> list[dict[str, Share]]:
    """Per base phase: {source: Share}, samples in whole global batches."""
    g = cfg.train.global_batch_size
    where = f"{cfg.source_file}: " if cfg.source_file else ""
    out = []
    for i, ph in enumerate(cfg.data.phases):
        if ph.steps is None:
            raise ConfigError(f"{where}data.phases[{i}] ({ph.name}): the study needs phase lengths in steps")
        active = {e.name for e in plan.phases[i].entries} if plan is not None else None
        weights, rates = {}, {}
        for key, e in ph.entries().items():
            if e.weight <= 0 or (active is not None and key not in active):
                continue
            src = e.replay.source if e.replay is not None else key
            fim = e.fim_rate if e.fim_rate is not None else (ph.fim_rate if cfg.data.sources[src].fim else 0.0)
            spm = e.fim_spm_rate if e.fim_spm_rate is not None else ph.fim_spm_rate
            weights[key], rates[key] = e.weight, (src, fim, spm)
        shares: dict[str, Share] = {}
        for key, units in _apportion(int(ph.steps), weights).items():
            if units:
                src, fim, spm = rates[key]
                new = Share(units * g, fim, spm)
                shares[src] = shares[src].add(new) if src in shares else new
        out.append(shares)
    return out


def _phase(cfg: Config, k: int, name: str, shares: dict[str, Share]) -> PhaseConfig:
    base = cfg.data.phases[min(k, len(cfg.data.phases) - 1)]
    blend = {
        s: BlendEntry(weight=float(x.samples), fim_rate=x.fim_rate, fim_spm_rate=x.fim_spm_rate)
        for s, x in shares.items()
    }
    steps = sum(x.samples for x in shares.values()) // cfg.train.global_batch_size
    return PhaseConfig(name=name, steps=steps, blend=blend, fim_rate=0.0, **{f: getattr(base, f) for f in LR_FIELDS})


def derive_phases(cfg: Config, variant: str, plan=None) -> list[PhaseConfig]:
    """The phases of `variant` (one of VARIANTS) built from `cfg`'s phases."""
    per_phase = phase_shares(cfg, plan)
    names = [p.name for p in cfg.data.phases]
    if variant == "crystal":
        return [_phase(cfg, k, names[k], s) for k, s in enumerate(per_phase)]
    if variant == "reversed":
        order = list(reversed(range(len(per_phase))))
        return [_phase(cfg, k, names[i], per_phase[i]) for k, i in enumerate(order)]
    total: dict[str, Share] = {}
    for shares in per_phase:
        for s, x in shares.items():
            total[s] = total[s].add(x) if s in total else x
    if variant == "mixed":
        return [_phase(cfg, 0, "mixed", total)]
    if variant == "sequential":
        kinds = {n: s.kind for n, s in cfg.data.sources.items()}
        nl = {s: x for s, x in total.items() if kinds[s] != "code"}
        code = {s: x for s, x in total.items() if kinds[s] == "code"}
        phases = [_phase(cfg, 0, "language_only", nl)] if nl else []
        return phases + ([_phase(cfg, len(phases), "code_only", code)] if code else [])
    raise ConfigError(f"study variant {variant!r}: expected one of {list(VARIANTS)}")


def variant_config(cfg: Config, variant: str, plan=None) -> Config:
    """A copy of `cfg` whose phases are `variant`'s."""
    out = copy.deepcopy(cfg)
    out.data.phases = derive_phases(cfg, variant, plan)
    return out


def source_totals(phases: list[PhaseConfig], global_batch_size: int) -> dict[str, tuple[int, float]]:
    """{source: (samples, expected FIM samples)} summed over phases, from count-valued blends."""
    out: dict[str, tuple[int, float]] = {}
    for p in phases:
        entries = p.entries()
        w = sum(e.weight for e in entries.values())
        for s, e in entries.items():
            n = round(e.weight / w * p.steps * global_batch_size)
            fim = n * (e.fim_rate or 0.0)
            prev = out.get(s, (0, 0.0))
            out[s] = (prev[0] + n, prev[1] + fim)
    return out
