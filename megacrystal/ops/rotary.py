"""Rotary position embedding on a fraction of each head's dims, GPT-J interleaved or rotate-half.

`cos`/`sin` have shape [seq, rot/2] (one angle per rotated pair); dims past `rot` pass through.
Interleaved (Crystal, GPT-J): pairs are (0,1), (2,3), ...; rotate-half (LLaMA): pairs (i, i+rot/2).
"""

from __future__ import annotations

import torch

from .precision import widen


def rope_angles(
    positions: torch.Tensor, rot_dim: int, base: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin in `dtype` (fp32, or fp64 for fp64 models) for integer `positions` (any shape) -> shape
    positions.shape + [rot_dim/2]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64, device=positions.device) / rot_dim))
    ang = positions.to(torch.float64)[..., None] * inv_freq
    return ang.cos().to(dtype), ang.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    rot = 2 * cos.shape[-1]
    xr, xp = widen(x[..., :rot]), x[..., rot:]
    # cos/sin: [b, s, rot/2] or [s, rot/2] -> broadcast over heads: x is [b, s, h, d]
    c = cos.unsqueeze(-2)
    s = sin.unsqueeze(-2)
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
    else:
        half = rot // 2
        x1, x2 = xr[..., :half], xr[..., half:]
        out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    return torch.cat((out.to(x.dtype), xp), dim=-1)


def rotary_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [b, s, hq, d], k: [b, s, hk, d]; cos/sin [s, rot/2] or [b, s, rot/2]."""
    if cos.shape[-1] == 0:
        return q, k
    return _rotate(q, cos, sin, interleaved), _rotate(k, cos, sin, interleaved)


def qkv_rotary_reference(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused QKV projection's output [b, s, hk, g+2, d] (per KV head: g query heads, k, v) -> q [b, s, hk*g, d],
    k and v [b, s, hk, d], q and k rotated; v contiguous (what the attention kernels take)."""
    b, s, hk, g2, d = qkv.shape
    g = g2 - 2
    q, k = rotary_reference(qkv[:, :, :, :g].reshape(b, s, hk * g, d), qkv[:, :, :, g], cos, sin, interleaved)
    return q, k, qkv[:, :, :, g + 1].contiguous()
