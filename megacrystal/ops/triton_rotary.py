"""Rotary embedding in Triton: q and k of one token in one program (one launch for both), a fraction
of each head's dims rotated (GPT-J interleaved pairs or rotate-half), the rest copied through.

Forward rotates by +angle; backward is the same kernel rotating the incoming gradients by -angle
(the rotation is orthogonal, so its transpose is the inverse). cos/sin are fp32 [s, rot/2] or
[b, s, rot/2]; q/k may be strided views (e.g. slices of a fused QKV output) with a unit last stride.

Two entry points over one kernel:
- `rotary_triton(q, k, cos, sin, interleaved)`: q [b,s,hq,d], k [b,s,hk,d] -> rotated copies (or, through
  `rotary_apply(..., inplace=True)`, only the rotated dims rewritten in place).
- `qkv_rotary_triton(qkv, cos, sin, interleaved)`: the fused QKV projection's output [b,s,hk,g+2,d] (per KV
  head: g query heads, then k, then v) -> contiguous q [b,s,hk*g,d], k, v [b,s,hk,d] with q and k rotated, in
  one pass; its backward writes the packed d(qkv) from dq, dk, dv in one pass too (rotating back), in place
  of autograd's three slice/select backwards (each a zero-filled full-size buffer plus a copy, then adds).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_util import block, check_device, on_meta, unit_last


@triton.jit
def _load_pairs(X, off, hm, ROT, ROT_HALF, INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
    """The rotated dims of BLOCK_H heads (head offsets `off` [BLOCK_H, 1], mask `hm`) as fp32 pair halves
    (x1, x2), each [BLOCK_H, BLOCK_R]; loads are contiguous runs (interleaved: the whole rotated run, split
    into even/odd lanes in registers)."""
    if INTERLEAVED:
        r = tl.arange(0, 2 * BLOCK_R)[None, :]
        x = tl.load(X + off + r, mask=hm & (r < ROT), other=0.0).to(tl.float32)
        x1, x2 = tl.split(tl.reshape(x, [BLOCK_H, BLOCK_R, 2]))
    else:
        r = tl.arange(0, BLOCK_R)[None, :]
        m = hm & (r < ROT_HALF)
        x1 = tl.load(X + off + r, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(X + off + ROT_HALF + r, mask=m, other=0.0).to(tl.float32)
    return x1, x2


@triton.jit
def _store_pairs(
    Y, off, hm, ROT, ROT_HALF, x1, x2, c, s, INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr
):
    y1 = x1 * c - x2 * s
    y2 = x2 * c + x1 * s
    if INTERLEAVED:
        r = tl.arange(0, 2 * BLOCK_R)[None, :]
        y = tl.reshape(tl.join(y1, y2), [BLOCK_H, 2 * BLOCK_R])
        tl.store(Y + off + r, y.to(Y.dtype.element_ty), mask=hm & (r < ROT))
    else:
        r = tl.arange(0, BLOCK_R)[None, :]
        m = hm & (r < ROT_HALF)
        tl.store(Y + off + r, y1.to(Y.dtype.element_ty), mask=m)
        tl.store(Y + off + ROT_HALF + r, y2.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _rotary(
    Q,
    K,
    V,
    OQ,
    OK,
    OV,
    COS,
    SIN,
    sq_b,
    sq_s,
    sq_g,
    sq_h,
    sk_b,
    sk_s,
    sk_h,
    sv_b,
    sv_s,
    sv_h,
    soq_b,
    soq_s,
    soq_g,
    soq_h,
    sok_b,
    sok_s,
    sok_h,
    sov_b,
    sov_s,
    sov_h,
    sc_b,
    sc_s,
    S,
    HQ,
    HK,
    G,
    D,
    ROT,
    ROT_HALF,
    sign,
    INTERLEAVED: tl.constexpr,
    COPY_REST: tl.constexpr,
    COPY_V: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One token per program: its q and k heads (and v, copied, when COPY_V). Query head h lives at
    (h // G) * s_g + (h % G) * s_h (G query heads per KV group: the fused-QKV layout; plain [.., h, d] tensors
    pass s_g = G * s_h). Every load is issued before the first store (the compiler may not move loads past
    stores that could alias), so a program has all its bytes in flight at once. COPY_REST=False rotates in
    place (OQ is Q, OK is K) and touches only the rotated dims."""
    t = tl.program_id(0).to(tl.int64)
    b = t // S
    i = t % S
    q = Q + b * sq_b + i * sq_s
    k = K + b * sk_b + i * sk_s
    oq = OQ + b * soq_b + i * soq_s
    ok = OK + b * sok_b + i * sok_s
    hq = tl.arange(0, BLOCK_HQ)[:, None]
    hk = tl.arange(0, BLOCK_HK)[:, None]
    mq = hq < HQ
    mk = hk < HK
    q_off = (hq // G) * sq_g + (hq % G) * sq_h
    oq_off = (hq // G) * soq_g + (hq % G) * soq_h
    j = tl.arange(0, BLOCK_R)[None, :]
    c = tl.load(COS + b * sc_b + i * sc_s + j, mask=j < ROT_HALF, other=1.0).to(tl.float32)
    s = tl.load(SIN + b * sc_b + i * sc_s + j, mask=j < ROT_HALF, other=0.0).to(tl.float32) * sign
    q1, q2 = _load_pairs(q, q_off, mq, ROT, ROT_HALF, INTERLEAVED, BLOCK_HQ, BLOCK_R)
    k1, k2 = _load_pairs(k, hk * sk_h, mk, ROT, ROT_HALF, INTERLEAVED, BLOCK_HK, BLOCK_R)
    if COPY_REST:
        p = ROT + tl.arange(0, BLOCK_P)[None, :]
        pq = tl.load(q + q_off + p, mask=mq & (p < D), other=0.0)
        pk = tl.load(k + hk * sk_h + p, mask=mk & (p < D), other=0.0)
    if COPY_V:
        dd = tl.arange(0, BLOCK_D)[None, :]
        vv = tl.load(V + b * sv_b + i * sv_s + hk * sv_h + dd, mask=mk & (dd < D), other=0.0)
    _store_pairs(oq, oq_off, mq, ROT, ROT_HALF, q1, q2, c, s, INTERLEAVED, BLOCK_HQ, BLOCK_R)
    _store_pairs(ok, hk * sok_h, mk, ROT, ROT_HALF, k1, k2, c, s, INTERLEAVED, BLOCK_HK, BLOCK_R)
    if COPY_REST:
        tl.store(oq + oq_off + p, pq, mask=mq & (p < D))
        tl.store(ok + hk * sok_h + p, pk, mask=mk & (p < D))
    if COPY_V:
        tl.store(OV + b * sov_b + i * sov_s + hk * sov_h + dd, vv, mask=mk & (dd < D))


# (interleaved, copies the pass-through dims) -> num_warps; set by the tuner for the run after its sweep
TUNED_WARPS: dict = {}


def _warps(elems: int) -> int:
    """Measured on an H200 (kernels/bench/NOTES.md): 8 warps for a token's q+k of 32+32 heads x 128 (92% of copy
    bandwidth rotate-half, 87% Crystal's quarter with the copy), 1 warp for the in-place quarter alone (2048
    elements); the spread between 1 and 8 warps was under 5% in every case."""
    return 8 if elems > 4096 else max(1, min(4, elems // 2048))


def _angles(cos: torch.Tensor, sin: torch.Tensor, d: int):
    half = cos.shape[-1]
    if 2 * half > d:
        raise ValueError(f"rotary: cos/sin cover {2 * half} dims but the head has {d}")
    cos, sin = cos.float(), sin.float()
    if sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    sc = (0, cos.stride(0)) if cos.dim() == 2 else (cos.stride(0), cos.stride(1))
    return cos, sin, sc, half


def _launch(
    q5, k, v, oq5, ok, ov, cos, sin, sc, half, interleaved: bool, inverse: bool, copy_rest: bool, warps: int | None
) -> None:
    """q5/oq5: [b, s, groups, g, d] views; k, ok: [b, s, hk, d]; v, ov: [b, s, hk, d] or None."""
    bsz, seq, groups, g, d = q5.shape
    hq, hk = groups * g, k.shape[2]
    if bsz * seq == 0 or on_meta(q5):
        return
    copy_v = v is not None
    bhq, bhk, br = block(hq), block(hk), block(half)
    bp = block(d - 2 * half) if copy_rest else 1
    bd = block(d) if copy_v else 1
    elems = (bhq + bhk) * (2 * br + (bp if copy_rest else 0)) + (bhk * bd if copy_v else 0)
    vs = v.stride() if copy_v else (0, 0, 0, 1)
    ovs = ov.stride() if copy_v else (0, 0, 0, 1)
    _rotary[(bsz * seq,)](
        q5,
        k,
        v if copy_v else k,
        oq5,
        ok,
        ov if copy_v else ok,
        cos,
        sin,
        q5.stride(0),
        q5.stride(1),
        q5.stride(2),
        q5.stride(3),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        vs[0],
        vs[1],
        vs[2],
        oq5.stride(0),
        oq5.stride(1),
        oq5.stride(2),
        oq5.stride(3),
        ok.stride(0),
        ok.stride(1),
        ok.stride(2),
        ovs[0],
        ovs[1],
        ovs[2],
        sc[0],
        sc[1],
        seq,
        hq,
        hk,
        g,
        d,
        2 * half,
        half,
        -1.0 if inverse else 1.0,
        INTERLEAVED=interleaved,
        COPY_REST=copy_rest,
        COPY_V=copy_v,
        BLOCK_HQ=bhq,
        BLOCK_HK=bhk,
        BLOCK_R=br,
        BLOCK_P=bp,
        BLOCK_D=bd,
        num_warps=warps or TUNED_WARPS.get((interleaved, copy_rest)) or _warps(elems),
    )


def rotary_apply(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool,
    inverse: bool = False,
    inplace: bool = False,
    warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation of q [b,s,hq,d] and k [b,s,hk,d]; `inverse` rotates by -angle. Out of place by default (new
    contiguous tensors, pass-through dims copied); `inplace` rewrites only the rotated dims of q and k
    (which may be strided views, e.g. of a fused QKV buffer, with a unit last stride)."""
    if inplace and (q.stride(-1) != 1 or k.stride(-1) != 1):
        raise ValueError("rotary in place: q and k need a unit stride on the head dim")
    q, k = unit_last(q), unit_last(k)
    bsz, seq, hq, d = q.shape
    cos, sin, sc, half = _angles(cos, sin, d)
    if inplace:
        oq, ok = q, k
    else:
        oq = torch.empty((bsz, seq, hq, d), dtype=q.dtype, device=q.device)
        ok = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    _launch(
        q.unsqueeze(2),
        k,
        None,
        oq.unsqueeze(2),
        ok,
        None,
        cos,
        sin,
        sc,
        half,
        interleaved,
        inverse,
        not inplace and d > 2 * half,
        warps,
    )
    return oq, ok


def qkv_split_rotary(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, warps: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv [b, s, hk, g+2, d] (unit last stride) -> contiguous q [b, s, hk*g, d] and k [b, s, hk, d] rotated,
    v [b, s, hk, d] copied; one pass over qkv."""
    bsz, seq, hk, g2, d = qkv.shape
    g = g2 - 2
    cos, sin, sc, half = _angles(cos, sin, d)
    q = torch.empty((bsz, seq, hk * g, d), dtype=qkv.dtype, device=qkv.device)
    k = torch.empty((bsz, seq, hk, d), dtype=qkv.dtype, device=qkv.device)
    v = torch.empty((bsz, seq, hk, d), dtype=qkv.dtype, device=qkv.device)
    _launch(
        qkv[:, :, :, :g],
        qkv[:, :, :, g],
        qkv[:, :, :, g + 1],
        q.view(bsz, seq, hk, g, d),
        k,
        v,
        cos,
        sin,
        sc,
        half,
        interleaved,
        False,
        d > 2 * half,
        warps,
    )
    return q, k, v


def qkv_pack_unrotary(
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool,
    warps: int | None = None,
) -> torch.Tensor:
    """The backward of `qkv_split_rotary`: dq [b,s,hk*g,d], dk, dv [b,s,hk,d] -> d(qkv) [b,s,hk,g+2,d], dq and dk
    rotated back; one pass, every element of d(qkv) written."""
    dq, dk, dv = unit_last(dq), unit_last(dk), unit_last(dv)
    bsz, seq, hq, d = dq.shape
    hk = dk.shape[2]
    g = hq // hk
    cos, sin, sc, half = _angles(cos, sin, d)
    out = torch.empty((bsz, seq, hk, g + 2, d), dtype=dq.dtype, device=dq.device)
    # dq's head h = group * g + slot: as a [b, s, hk, g, d] view (strides from dq, which may be non-contiguous)
    dq5 = dq.as_strided((bsz, seq, hk, g, d), (dq.stride(0), dq.stride(1), g * dq.stride(2), dq.stride(2), 1))
    _launch(
        dq5,
        dk,
        dv,
        out[:, :, :, :g],
        out[:, :, :, g],
        out[:, :, :, g + 1],
        cos,
        sin,
        sc,
        half,
        interleaved,
        True,
        d > 2 * half,
        warps,
    )
    return out


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


def rotary_triton(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `rotary.rotary_reference` (no gradient flows to cos/sin)."""
    if cos.shape[-1] == 0:
        return q, k
    if cos.dim() == 3 and cos.shape[0] != q.shape[0]:
        cos, sin = cos.expand(q.shape[0], -1, -1), sin.expand(q.shape[0], -1, -1)
    return RotaryFunction.apply(q, k, cos, sin, interleaved)


class QKVRotaryFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cos, sin, interleaved):
        check_device(qkv, cos)
        ctx.save_for_backward(cos, sin)
        ctx.interleaved = interleaved
        ctx.dtype, ctx.shape = qkv.dtype, qkv.shape
        return qkv_split_rotary(unit_last(qkv), cos, sin, interleaved)

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        b, s, hk, g2, d = ctx.shape
        like = next(t for t in (dq, dk, dv) if t is not None)
        zeros = lambda h: torch.zeros((b, s, h, d), dtype=ctx.dtype, device=like.device)
        dq = dq if dq is not None else zeros(hk * (g2 - 2))
        dk = dk if dk is not None else zeros(hk)
        dv = dv if dv is not None else zeros(hk)
        return qkv_pack_unrotary(dq, dk, dv, cos, sin, ctx.interleaved), None, None, None


def qkv_rotary_triton(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as `rotary.qkv_rotary_reference` (no gradient flows to cos/sin)."""
    if cos.dim() == 3 and cos.shape[0] != qkv.shape[0]:
        cos, sin = cos.expand(qkv.shape[0], -1, -1), sin.expand(qkv.shape[0], -1, -1)
    return QKVRotaryFunction.apply(qkv, cos, sin, interleaved)
