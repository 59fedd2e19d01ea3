"""Fused LayerNorm / RMSNorm in Triton: one kernel with an `RMS` flag, fp32 statistics.

Forward: each program normalises ROWS whole rows held in registers ([ROWS, next_pow2(N)]), saves the mean
(LayerNorm) and 1/std of each row in fp32.
Backward: a grid of about (SMs x a few) programs; each walks a contiguous chunk of rows (TILE rows per step,
ITERS steps, both compile-time constants), its loads software-pipelined `STAGES` deep, writes dx and keeps
its partial sums of dw (= sum dy*xhat) and db (= sum dy) in fp32 registers; it writes one partial row, and a
second small kernel sums the partial rows straight into the weight's dtype (no atomics: deterministic).
Inputs bf16/fp16/fp32 are upcast right after loading; outputs are stored in the input's dtype.
Launch shapes come from `norm_config.py` (measured on an H200), overridable per call for the tuner.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .norm_config import BwdConfig, FwdConfig, bwd_config, fwd_config
from .triton_util import block, check_device, on_meta, rows2d, sm_count


@triton.jit
def _norm_fwd(
    X,
    Y,
    W,
    B,
    MEAN,
    RSTD,
    stride_x,
    stride_y,
    M,
    N,
    eps,
    RMS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    live = rows < M
    mask = live[:, None] & (cols < N)[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b = tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)
    if RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=1) / N
        xc = tl.where(mask, x - mean[:, None], 0.0)
        tl.store(MEAN + rows, mean, mask=live)
    var = tl.sum(xc * xc, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(RSTD + rows, rstd, mask=live)
    y = xc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += b[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd(
    X,
    W,
    DY,
    DX,
    MEAN,
    RSTD,
    DW,
    DB,
    stride_x,
    stride_dy,
    stride_dx,
    M,
    N,
    TILE: tl.constexpr,
    ITERS: tl.constexpr,
    STAGES: tl.constexpr,
    RMS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    cmask = cols < N
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([TILE, BLOCK], dtype=tl.float32)
    db = tl.zeros([TILE, BLOCK], dtype=tl.float32)
    first = pid.to(tl.int64) * (TILE * ITERS)
    for it in tl.range(0, ITERS, num_stages=STAGES):
        rows = first + it * TILE + tl.arange(0, TILE)
        live = rows < M  # the last programs may run past the end
        mask = live[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=live, other=0.0)
        if RMS:
            xhat = x * rstd[:, None]
        else:
            xhat = tl.where(mask, (x - tl.load(MEAN + rows, mask=live, other=0.0)[:, None]) * rstd[:, None], 0.0)
        wdy = w[None, :] * dy
        c1 = tl.sum(xhat * wdy, axis=1) / N
        if RMS:
            dx = (wdy - xhat * c1[:, None]) * rstd[:, None]
        else:
            c2 = tl.sum(wdy, axis=1) / N
            dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        if HAS_BIAS:
            db += dy
    tl.store(DW + pid * N + cols, tl.sum(dw, axis=0), mask=cmask)
    if HAS_BIAS:
        tl.store(DB + pid * N + cols, tl.sum(db, axis=0), mask=cmask)


@triton.jit
def _sum_partials(
    PW, PB, OW, OB, P, N, HAS_BIAS: tl.constexpr, CHUNKS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr
):
    """OW[n] = sum_p PW[p, n] (and OB from PB), stored in OW's dtype."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    aw = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    ab = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for c in range(0, CHUNKS):
        p = c * BLOCK_P + tl.arange(0, BLOCK_P)
        m = (p < P)[:, None] & cmask[None, :]
        aw += tl.load(PW + p[:, None] * N + cols[None, :], mask=m, other=0.0)
        if HAS_BIAS:
            ab += tl.load(PB + p[:, None] * N + cols[None, :], mask=m, other=0.0)
    tl.store(OW + cols, tl.sum(aw, axis=0).to(OW.dtype.element_ty), mask=cmask)
    if HAS_BIAS:
        tl.store(OB + cols, tl.sum(ab, axis=0).to(OB.dtype.element_ty), mask=cmask)


def norm_forward(
    x2: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    rms: bool,
    cfg: FwdConfig | None = None,
):
    """x2 [rows, N] (unit last stride) -> (y, mean, rstd); mean is empty for RMSNorm."""
    m, n = x2.shape
    y = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x2.device)
    mean = torch.empty(0 if rms else m, dtype=torch.float32, device=x2.device)
    blk = block(n)
    if m and not on_meta(x2):
        cfg = cfg or fwd_config(n, x2.element_size())
        _norm_fwd[(triton.cdiv(m, cfg.rows),)](
            x2,
            y,
            weight,
            bias if bias is not None else weight,
            mean if not rms else rstd,
            rstd,
            x2.stride(0),
            y.stride(0),
            m,
            n,
            eps,
            RMS=rms,
            HAS_BIAS=bias is not None,
            BLOCK=blk,
            ROWS=cfg.rows,
            num_warps=cfg.warps,
        )
    return y, mean, rstd


def norm_backward(dy2, x2, weight, bias, mean, rstd, rms: bool, cfg: BwdConfig | None = None):
    """-> (dx [rows, N] in x's dtype, dw in weight's dtype, db in bias's dtype or None)."""
    m, n = x2.shape
    dy2 = dy2 if dy2.stride(-1) == 1 else dy2.contiguous()
    dx = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    cfg = cfg or bwd_config(n, x2.element_size())
    tile, iters = cfg.plan(m, sm_count())
    progs = max(1, triton.cdiv(m, tile * iters))
    has_bias = bias is not None
    # every program writes its whole partial row (zeros when it has no rows), so no zero-fill is needed
    dw_part = torch.empty((progs, n), dtype=torch.float32, device=x2.device)
    db_part = torch.empty((progs, n), dtype=torch.float32, device=x2.device) if has_bias else dw_part
    blk = block(n)
    if m and not on_meta(x2):
        _norm_bwd[(progs,)](
            x2,
            weight,
            dy2,
            dx,
            mean if not rms else rstd,
            rstd,
            dw_part,
            db_part,
            x2.stride(0),
            dy2.stride(0),
            dx.stride(0),
            m,
            n,
            TILE=tile,
            ITERS=iters,
            STAGES=cfg.stages,
            RMS=rms,
            HAS_BIAS=has_bias,
            BLOCK=blk,
            num_warps=cfg.warps,
        )
    elif not m:
        dw_part.zero_()
        db_part.zero_()
    dw = torch.empty_like(weight)
    db = torch.empty_like(bias) if has_bias else None
    bp, bn = 32, 64
    if on_meta(x2):
        return dx, dw, db
    _sum_partials[(triton.cdiv(n, bn),)](
        dw_part,
        db_part,
        dw,
        db if has_bias else dw,
        progs,
        n,
        HAS_BIAS=has_bias,
        CHUNKS=triton.cdiv(progs, bp),
        BLOCK_P=bp,
        BLOCK_N=bn,
        num_warps=4,
    )
    return dx, dw, db


class NormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, rms):
        check_device(x, weight)
        x2 = rows2d(x)
        y, mean, rstd = norm_forward(x2, weight, bias, eps, rms)
        ctx.save_for_backward(x2, weight, bias, mean, rstd)
        ctx.rms = rms
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dw, db = norm_backward(dy.reshape(x2.shape), x2, weight, bias, mean, rstd, ctx.rms)
        return dx.view(dy.shape), dw, db, None, None


def norm_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, rms: bool
) -> torch.Tensor:
    """Same contract as `norm.norm_reference`: fp32 statistics, output in x's dtype."""
    return NormFunction.apply(x, weight, bias, eps, rms)
