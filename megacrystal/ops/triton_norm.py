"""Fused LayerNorm / RMSNorm in Triton: one kernel with an `RMS` flag, fp32 statistics.

Forward: one program per row, saves mean (LayerNorm) and 1/std per row (fp32).
Backward: each program walks a block of rows (a power of two, a compile-time constant), writes dx, and keeps its partial
sums of dw (= Σ dy·x̂) and db (= Σ dy) in registers; the partials [programs, hidden] are summed after.
Inputs bf16/fp16/fp32 are upcast right after loading; outputs are stored in the input's dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .triton_util import block, check_device, rows2d, rows_per_program, warps


@triton.jit
def _norm_fwd(X, Y, W, B, MEAN, RSTD, stride_x, stride_y, N, eps,
              RMS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=0) / N
        xc = tl.where(mask, x - mean, 0.0)
        tl.store(MEAN + row, mean)
    var = tl.sum(xc * xc, axis=0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(RSTD + row, rstd)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w
    if HAS_BIAS:
        y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd(X, W, DY, DX, MEAN, RSTD, DW, DB, stride_x, stride_dy, stride_dx, M, N,
              ROWS_PER_PROGRAM: tl.constexpr, RMS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    db = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, ROWS_PER_PROGRAM):
        row = pid.to(tl.int64) * ROWS_PER_PROGRAM + i
        live = row < M                      # the last program may run past the end
        rmask = mask & live
        x = tl.load(X + row * stride_x + cols, mask=rmask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=rmask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row, mask=live, other=0.0)
        if RMS:
            xhat = x * rstd
        else:
            xhat = (x - tl.load(MEAN + row, mask=live, other=0.0)) * rstd
        xhat = tl.where(rmask, xhat, 0.0)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, axis=0) / N
        if RMS:
            dx = (wdy - xhat * c1) * rstd
        else:
            c2 = tl.sum(wdy, axis=0) / N
            dx = (wdy - (xhat * c1 + c2)) * rstd
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=rmask)
        dw += dy * xhat
        if HAS_BIAS:
            db += dy
    tl.store(DW + pid * N + cols, dw, mask=mask)
    if HAS_BIAS:
        tl.store(DB + pid * N + cols, db, mask=mask)


def norm_forward(x2: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float, rms: bool):
    """x2 [rows, N] (unit last stride) -> (y, mean, rstd); mean is empty for RMSNorm."""
    m, n = x2.shape
    y = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x2.device)
    mean = torch.empty(0 if rms else m, dtype=torch.float32, device=x2.device)
    blk = block(n)
    if m:
        _norm_fwd[(m,)](x2, y, weight, bias if bias is not None else weight, mean if not rms else rstd, rstd,
                        x2.stride(0), y.stride(0), n, eps, RMS=rms, HAS_BIAS=bias is not None, BLOCK=blk,
                        num_warps=warps(blk))
    return y, mean, rstd


def norm_backward(dy2, x2, weight, bias, mean, rstd, rms: bool):
    """-> (dx [rows, N] in x's dtype, dw in weight's dtype, db in bias's dtype or None)."""
    m, n = x2.shape
    dy2 = dy2 if dy2.stride(-1) == 1 else dy2.contiguous()
    dx = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    rows_per = rows_per_program(m)
    progs = max(1, triton.cdiv(m, rows_per))
    dw_part = torch.zeros((progs, n), dtype=torch.float32, device=x2.device)
    db_part = torch.zeros((progs, n), dtype=torch.float32, device=x2.device) if bias is not None else dw_part
    blk = block(n)
    if m:
        _norm_bwd[(progs,)](x2, weight, dy2, dx, mean if not rms else rstd, rstd, dw_part, db_part,
                            x2.stride(0), dy2.stride(0), dx.stride(0), m, n,
                            ROWS_PER_PROGRAM=rows_per, RMS=rms, HAS_BIAS=bias is not None, BLOCK=blk, num_warps=warps(blk))
    dw = dw_part.sum(0).to(weight.dtype)
    db = db_part.sum(0).to(bias.dtype) if bias is not None else None
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


def norm_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float,
                rms: bool) -> torch.Tensor:
    """Same contract as `norm.norm_reference`: fp32 statistics, output in x's dtype."""
    return NormFunction.apply(x, weight, bias, eps, rms)
