"""Rotary embedding in Triton: q and k of one token in one program (one launch for both), a fraction
of each head's dims rotated (GPT-J interleaved pairs or rotate-half), the rest copied through.

Forward rotates by +angle; backward is the same kernel rotating the incoming gradients by -angle
(the rotation is orthogonal, so its transpose is the inverse). cos/sin are fp32 [s, rot/2] or
[b, s, rot/2]; q/k may be strided views (e.g. slices of a fused QKV output) with a unit last stride.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_util import block, check_device


@triton.jit
def _rotate_heads(X, Y, sx_h, sy_h, H, D, ROT_HALF, c, s,
                  INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
                  BLOCK_P: tl.constexpr):
    h = tl.arange(0, BLOCK_H)[:, None]
    r = tl.arange(0, BLOCK_R)[None, :]
    m = (h < H) & (r < ROT_HALF)
    if INTERLEAVED:
        i1 = 2 * r
        i2 = 2 * r + 1
    else:
        i1 = r
        i2 = r + ROT_HALF
    x1 = tl.load(X + h * sx_h + i1, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(X + h * sx_h + i2, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + h * sy_h + i1, (x1 * c - x2 * s).to(Y.dtype.element_ty), mask=m)
    tl.store(Y + h * sy_h + i2, (x2 * c + x1 * s).to(Y.dtype.element_ty), mask=m)
    p = 2 * ROT_HALF + tl.arange(0, BLOCK_P)[None, :]
    mp = (h < H) & (p < D)
    tl.store(Y + h * sy_h + p, tl.load(X + h * sx_h + p, mask=mp, other=0.0), mask=mp)


@triton.jit
def _rotary(Q, K, OQ, OK, COS, SIN,
            sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, soq_b, soq_s, soq_h, sok_b, sok_s, sok_h, sc_b, sc_s,
            S, HQ, HK, D, ROT_HALF, sign,
            INTERLEAVED: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
            BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    b = t // S
    i = t % S
    r = tl.arange(0, BLOCK_R)[None, :]
    rm = r < ROT_HALF
    c = tl.load(COS + b * sc_b + i * sc_s + r, mask=rm, other=1.0).to(tl.float32)
    s = tl.load(SIN + b * sc_b + i * sc_s + r, mask=rm, other=0.0).to(tl.float32) * sign
    _rotate_heads(Q + b * sq_b + i * sq_s, OQ + b * soq_b + i * soq_s, sq_h, soq_h, HQ, D, ROT_HALF, c, s,
                  INTERLEAVED, BLOCK_HQ, BLOCK_R, BLOCK_P)
    _rotate_heads(K + b * sk_b + i * sk_s, OK + b * sok_b + i * sok_s, sk_h, sok_h, HK, D, ROT_HALF, c, s,
                  INTERLEAVED, BLOCK_HK, BLOCK_R, BLOCK_P)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def rotary_apply(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool,
                 inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Out-of-place rotation of q [b,s,hq,d] and k [b,s,hk,d]; `inverse` rotates by -angle."""
    q, k = _unit_last(q), _unit_last(k)
    bsz, seq, hq, d = q.shape
    hk = k.shape[2]
    half = cos.shape[-1]
    if 2 * half > d:
        raise ValueError(f"rotary: cos/sin cover {2 * half} dims but the head has {d}")
    cos, sin = cos.float(), sin.float()
    if cos.dim() == 2:
        sc_b, sc_s = 0, cos.stride(0)
    else:
        sc_b, sc_s = cos.stride(0), cos.stride(1)
    if sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
        sc_b, sc_s = (0, cos.stride(0)) if cos.dim() == 2 else (cos.stride(0), cos.stride(1))
    oq = torch.empty((bsz, seq, hq, d), dtype=q.dtype, device=q.device)
    ok = torch.empty((bsz, seq, hk, d), dtype=k.dtype, device=k.device)
    if bsz * seq:
        _rotary[(bsz * seq,)](
            q, k, oq, ok, cos, sin,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            oq.stride(0), oq.stride(1), oq.stride(2), ok.stride(0), ok.stride(1), ok.stride(2), sc_b, sc_s,
            seq, hq, hk, d, half, -1.0 if inverse else 1.0,
            INTERLEAVED=interleaved, BLOCK_HQ=block(hq), BLOCK_HK=block(hk), BLOCK_R=block(half),
            BLOCK_P=block(d - 2 * half), num_warps=4)
    return oq, ok


class RotaryFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin, interleaved):
        check_device(q, k, cos)
        ctx.save_for_backward(cos, sin)
        ctx.interleaved = interleaved
        return rotary_apply(q, k, cos, sin, interleaved)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        gq, gk = rotary_apply(dq, dk, cos, sin, ctx.interleaved, inverse=True)
        return gq, gk, None, None, None


def rotary_triton(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `rotary.rotary_reference` (no gradient flows to cos/sin)."""
    if cos.shape[-1] == 0:
        return q, k
    if cos.dim() == 3 and cos.shape[0] != q.shape[0]:
        cos, sin = cos.expand(q.shape[0], -1, -1), sin.expand(q.shape[0], -1, -1)
    return RotaryFunction.apply(q, k, cos, sin, interleaved)
