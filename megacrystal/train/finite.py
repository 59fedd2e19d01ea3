"""Non-finite values: the check a checkpoint save makes, and the trainer's count of skipped steps.

A step whose loss or global gradient norm is NaN/Inf is skipped by the engine (`Engine.train_step`
returns `skipped: True` and changes no state: parameters, masters, Adam moments and the optimizer's
step count stay as they were). `SkipCounter` counts those steps and stops the run after
`train.max_skipped_steps` in a row. `state_is_finite` is the guard every save calls: a checkpoint
is never written from parameters or optimizer state holding NaN/Inf.
"""

from __future__ import annotations

import math

import torch

from ..parallel import collectives as C
from ..parallel.host import to_host


class NonFiniteError(RuntimeError):
    """The run cannot go on (or save) because of non-finite values; the message is one line."""


def _tensors(obj, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel():
            out.append(obj.detach())
    elif isinstance(obj, dict):
        for v in obj.values():
            _tensors(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _tensors(v, out)
    return out


@torch.no_grad()
def state_is_finite(engine) -> bool:
    """True when no rank's parameters or optimizer state (masters, moments) hold NaN/Inf.
    Collective: every rank calls it; one all-reduce of one number over the world."""
    params = [p for m in engine.chunks for p in m.parameters()]
    tensors = _tensors(engine.optimizer.state_dict(), _tensors(params, []))
    flag = torch.zeros(1, dtype=torch.float32, device=engine.device)
    if tensors:  # max |x| per tensor (NaN propagates), no copy of the state; the verdict stays on the device
        peaks = torch.stack([n.float() for n in torch._foreach_norm(tensors, math.inf)])
        flag = (~torch.isfinite(peaks)).any().float().reshape(1)
    C.all_reduce(flag, engine.grid.world)
    return to_host(flag, "save.finite")[0] == 0.0


def ensure_finite(engine, step: int) -> None:
    """Raise NonFiniteError (on every rank alike) instead of saving a state holding NaN/Inf."""
    if not state_is_finite(engine):
        raise NonFiniteError(
            f"step {step}: the parameters or optimizer state hold NaN/Inf; no checkpoint written "
            f"(the previous checkpoint stays the newest)"
        )


class SkipCounter:
    """Skipped (non-finite) steps: cumulative, in a row, and per phase (the LR schedule lags by those)."""

    def __init__(self, limit: int, total: int = 0, per_phase: dict | None = None):
        self.limit = limit
        self.total = total
        self.per_phase: dict[str, int] = dict(per_phase or {})
        self.in_a_row = 0

    def lag(self, phase: str) -> int:
        """Steps of `phase` that made no update: the phase's LR schedule is that many steps behind."""
        return self.per_phase.get(phase, 0)

    def record(self, skipped: bool, step: int, phase: str, loss: float, grad_norm: float) -> None:
        """Count one step; raise NonFiniteError once `limit` steps in a row were skipped."""
        if not skipped:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        self.per_phase[phase] = self.per_phase.get(phase, 0) + 1
        if self.in_a_row >= self.limit:
            raise NonFiniteError(
                f"step {step}: {self.in_a_row} steps in a row with a non-finite loss or gradient norm "
                f"(last: loss {loss}, grad_norm {grad_norm}; train.max_skipped_steps={self.limit}); "
                f"stopped without saving them, the newest checkpoint is from before"
            )

    def state_dict(self) -> dict:
        return dict(skipped_steps=self.total, skipped_per_phase=dict(self.per_phase))
