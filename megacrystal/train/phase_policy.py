"""What changes with the phase besides data and LR: when to checkpoint, which sources to validate.

- `data.phases[].save_interval` (default `train.save_interval`): a checkpoint every N steps counted
  from the phase's first step (Crystal saved every 1500 steps in phases 1-2, every 1000 in phase 3,
  each phase a run of its own), and one at the phase's last step, so every phase's end can be
  restarted from; 0 turns periodic checkpoints off for the phase (the run's end is always saved).
- `train.keep_every` (M > 0): also a checkpoint at every step that is a multiple of M, counted over the
  whole run whatever the phase, so the checkpoints retention keeps for a trajectory (`eval --all`)
  exist and are evenly spaced in tokens even where phase lengths are not multiples of the interval.
- `data.phases[].valid_sources` (default: every source with held-out documents): the validation sets
  evaluated during the phase (Crystal validated phases 1-2 on SlimPajama-ArXiv only, phase 3 per
  language; validating every source every time costs eval_iters batches per source).
"""

from __future__ import annotations

from ..config import PhaseConfig
from .lr_schedule import PhaseSpan


def save_interval(phase: PhaseConfig, default: int) -> int:
    return default if phase.save_interval is None else phase.save_interval


def save_due(steps_done: int, span: PhaseSpan, phase: PhaseConfig, default: int, keep_every: int = 0) -> bool:
    """Whether to checkpoint after `steps_done` steps, the last of them in phase `span`."""
    if keep_every > 0 and steps_done % keep_every == 0:
        return True
    n = save_interval(phase, default)
    if n <= 0:
        return False
    into = steps_done - span.start_step
    return into % n == 0 or into == span.steps


def phase_validation(valid: dict, phase: PhaseConfig) -> dict:
    """The validation sets evaluated during `phase` (missing held-out sets are simply absent)."""
    if phase.valid_sources is None:
        return valid
    return {name: v for name, v in valid.items() if name in phase.valid_sources}
