"""The float type arithmetic is carried in: 16-bit tensors are widened to fp32 (statistics, losses,
optimizer state); fp32 stays fp32 and fp64 stays fp64. fp64 is the verification precision
(`train.precision: fp64`): parallel runs are compared with the serial one in it, where reduction
order no longer shows."""

from __future__ import annotations

import torch

WIDE = (torch.float32, torch.float64)


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64, fp32 for everything else (bf16, fp16, fp32)."""
    return dtype if dtype in WIDE else torch.float32


def widen(x: torch.Tensor) -> torch.Tensor:
    """`x` in its wide dtype (`x` itself when it already is, as `x.float()` is for fp32)."""
    return x if x.dtype in WIDE else x.float()
