"""Rotary embedding in Triton: q and k of one token in one program (one launch for both), a fraction
of each head's dims rotated (GPT-J interleaved pairs or rotate-half), the rest copied through.

Forward rotates by +angle; backward is the same kernel rotating the incoming gradients by -angle
(the rotation is orthogonal, so its transpose is the inverse). cos/sin are fp32 [s, rot/2] or
[b, s, rot/2]; q/k may be strided views (e.g. slices of a fused QKV output) with a unit last stride.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .triton_util import block, check_device


@triton.jit
def _load_pairs(X, sh, H, ROT, ROT_HALF, INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
    """The rotated dims of BLOCK_H heads as fp32 pair halves (x1, x2), each [BLOCK_H, BLOCK_R]; loads are
    contiguous runs (interleaved: the whole rotated run, split into even/odd lanes in registers)."""
    h = tl.arange(0, BLOCK_H)[:, None]
    if INTERLEAVED:
        r = tl.arange(0, 2 * BLOCK_R)[None, :]
        x = tl.load(X + h * sh + r, mask=(h < H) & (r < ROT), other=0.0).to(tl.float32)
        x1, x2 = tl.split(tl.reshape(x, [BLOCK_H, BLOCK_R, 2]))
    else:
        r = tl.arange(0, BLOCK_R)[None, :]
        m = (h < H) & (r < ROT_HALF)
        x1 = tl.load(X + h * sh + r, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(X + h * sh + ROT_HALF + r, mask=m, other=0.0).to(tl.float32)
    return x1, x2


@triton.jit
def _store_pairs(Y, sh, H, ROT, ROT_HALF, x1, x2, c, s,
                 INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
    y1 = x1 * c - x2 * s
    y2 = x2 * c + x1 * s
    h = tl.arange(0, BLOCK_H)[:, None]
    if INTERLEAVED:
        r = tl.arange(0, 2 * BLOCK_R)[None, :]
        y = tl.reshape(tl.join(y1, y2), [BLOCK_H, 2 * BLOCK_R])
        tl.store(Y + h * sh + r, y.to(Y.dtype.element_ty), mask=(h < H) & (r < ROT))
    else:
        r = tl.arange(0, BLOCK_R)[None, :]
        m = (h < H) & (r < ROT_HALF)
        tl.store(Y + h * sh + r, y1.to(Y.dtype.element_ty), mask=m)
        tl.store(Y + h * sh + ROT_HALF + r, y2.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _rotary(Q, K, OQ, OK, COS, SIN,
            sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, soq_b, soq_s, soq_h, sok_b, sok_s, sok_h, sc_b, sc_s,
            S, HQ, HK, D, ROT, ROT_HALF, sign,
            INTERLEAVED: tl.constexpr, COPY_REST: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
            BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """One token per program: q's and k's heads. Every load is issued before the first store (the compiler
    may not reorder loads past stores that could alias), so a program has all its bytes in flight at once.
    COPY_REST=False rotates in place (OQ is Q, OK is K) and touches only the rotated dims."""
    t = tl.program_id(0).to(tl.int64)
    b = t // S
    i = t % S
    q = Q + b * sq_b + i * sq_s
    k = K + b * sk_b + i * sk_s
    j = tl.arange(0, BLOCK_R)[None, :]
    c = tl.load(COS + b * sc_b + i * sc_s + j, mask=j < ROT_HALF, other=1.0).to(tl.float32)
    s = tl.load(SIN + b * sc_b + i * sc_s + j, mask=j < ROT_HALF, other=0.0).to(tl.float32) * sign
    q1, q2 = _load_pairs(q, sq_h, HQ, ROT, ROT_HALF, INTERLEAVED, BLOCK_HQ, BLOCK_R)
    k1, k2 = _load_pairs(k, sk_h, HK, ROT, ROT_HALF, INTERLEAVED, BLOCK_HK, BLOCK_R)
    if COPY_REST:
        p = ROT + tl.arange(0, BLOCK_P)[None, :]
        hq = tl.arange(0, BLOCK_HQ)[:, None]
        hk = tl.arange(0, BLOCK_HK)[:, None]
        mq = (hq < HQ) & (p < D)
        mk = (hk < HK) & (p < D)
        pq = tl.load(q + hq * sq_h + p, mask=mq, other=0.0)
        pk = tl.load(k + hk * sk_h + p, mask=mk, other=0.0)
    oq = OQ + b * soq_b + i * soq_s
    ok = OK + b * sok_b + i * sok_s
    _store_pairs(oq, soq_h, HQ, ROT, ROT_HALF, q1, q2, c, s, INTERLEAVED, BLOCK_HQ, BLOCK_R)
    _store_pairs(ok, sok_h, HK, ROT, ROT_HALF, k1, k2, c, s, INTERLEAVED, BLOCK_HK, BLOCK_R)
    if COPY_REST:
        tl.store(oq + hq * soq_h + p, pq, mask=mq)
        tl.store(ok + hk * sok_h + p, pk, mask=mk)


# (interleaved, copies the pass-through dims) -> num_warps; set by the tuner for the run after its sweep
TUNED_WARPS: dict = {}


def _pow2_floor(n: int) -> int:
    return 1 << (int(n).bit_length() - 1)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def rotary_apply(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool,
                 inverse: bool = False, inplace: bool = False,
                 warps: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation of q [b,s,hq,d] and k [b,s,hk,d]; `inverse` rotates by -angle. Out of place by default (new
    contiguous tensors, pass-through dims copied); `inplace` rewrites only the rotated dims of q and k
    (which may be strided views, e.g. of a fused QKV buffer, with a unit last stride)."""
    if inplace and (q.stride(-1) != 1 or k.stride(-1) != 1):
        raise ValueError("rotary in place: q and k need a unit stride on the head dim")
    q, k = _unit_last(q), _unit_last(k)
    bsz, seq, hq, d = q.shape
    hk = k.shape[2]
    half = cos.shape[-1]
    if 2 * half > d:
        raise ValueError(f"rotary: cos/sin cover {2 * half} dims but the head has {d}")
    cos, sin = cos.float(), sin.float()
    if sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    sc_b, sc_s = (0, cos.stride(0)) if cos.dim() == 2 else (cos.stride(0), cos.stride(1))
    if inplace:
        oq, ok = q, k
    else:
        oq = torch.empty((bsz, seq, hq, d), dtype=q.dtype, device=q.device)
        ok = torch.empty((bsz, seq, hk, d), dtype=k.dtype, device=k.device)
    if bsz * seq:
        copy_rest = not inplace and d > 2 * half
        bhq, bhk, br = block(hq), block(hk), block(half)
        bp = block(d - 2 * half) if copy_rest else 1
        elems = (bhq + bhk) * (2 * br + (bp if copy_rest else 0))
        _rotary[(bsz * seq,)](
            q, k, oq, ok, cos, sin,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            oq.stride(0), oq.stride(1), oq.stride(2), ok.stride(0), ok.stride(1), ok.stride(2), sc_b, sc_s,
            seq, hq, hk, d, 2 * half, half, -1.0 if inverse else 1.0,
            INTERLEAVED=interleaved, COPY_REST=copy_rest, BLOCK_HQ=bhq, BLOCK_HK=bhk, BLOCK_R=br, BLOCK_P=bp,
            num_warps=warps or TUNED_WARPS.get((interleaved, copy_rest)) or _pow2_floor(min(8, max(1, elems // 2048))))
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
