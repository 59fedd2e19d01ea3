"""SwiGLU gate: `up * silu(gate)` (Crystal: out = W_down(W_up(x) * silu(W_gate(x))))."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import widen


def swiglu_reference(up: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return (widen(up) * F.silu(widen(gate))).to(up.dtype)
