"""Per-phase learning-rate schedules, walked as one run.

Each phase has its own warmup (linear from 0), peak `lr`, `min_lr`, `decay_style` and
`decay_steps` (counted from the end of warmup, like Crystal's "decay over 294,337 steps"; it may
exceed the phase, in which case the phase stops part-way down its decay, as Crystal's phase 1 did).
After the decay the LR stays at `min_lr`. The LR is the base LR; muP groups multiply it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import PhaseConfig


@dataclass(frozen=True)
class PhaseSpan:
    index: int
    name: str
    start_step: int  # global step where the phase begins
    steps: int


def phase_lr(phase: PhaseConfig, step_in_phase: int, phase_steps: int) -> float:
    """Base LR at `step_in_phase` (0-based: the LR used for the update of that step)."""
    s = step_in_phase + 1  # Megatron counts the first update as step 1 of warmup
    if phase.warmup_steps > 0 and s <= phase.warmup_steps:
        return phase.lr * s / phase.warmup_steps
    if phase.decay_style == "constant":
        return phase.lr
    decay_steps = phase.decay_steps if phase.decay_steps is not None else max(phase_steps - phase.warmup_steps, 1)
    t = min(max(s - phase.warmup_steps, 0) / max(decay_steps, 1), 1.0)
    if phase.decay_style == "linear":
        coeff = 1.0 - t
    elif phase.decay_style == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        raise ValueError(f"decay_style: unknown {phase.decay_style!r}")
    return phase.min_lr + (phase.lr - phase.min_lr) * coeff


class Schedule:
    """Maps a global step to (phase span, base LR)."""

    def __init__(self, phases: Sequence[PhaseConfig], steps_per_phase: Sequence[int]):
        if len(phases) != len(steps_per_phase):
            raise ValueError("Schedule: one step count per phase expected")
        self.phases = list(phases)
        self.spans: list[PhaseSpan] = []
        start = 0
        for i, (ph, n) in enumerate(zip(phases, steps_per_phase, strict=True)):
            self.spans.append(PhaseSpan(i, ph.name, start, int(n)))
            start += int(n)
        self.total_steps = start

    def span(self, step: int) -> PhaseSpan:
        for sp in self.spans:
            if step < sp.start_step + sp.steps:
                return sp
        return self.spans[-1]

    def lr(self, step: int, lag: int = 0) -> float:
        """Base LR of `step`; `lag`: steps of its phase that made no update (skipped as non-finite),
        by which the phase's schedule is behind the step count."""
        sp = self.span(step)
        return phase_lr(self.phases[sp.index], step - sp.start_step - lag, sp.steps)
