"""SwiGLU gate in Triton: y = up · silu(gate), fp32 math, elementwise over flat tensors.

Backward recomputes silu from the saved inputs: d_up = dy·silu(g),
d_gate = dy·up·σ(g)·(1 + g·(1 − σ(g))). The up/gate biases are left to the linears (cuBLAS epilogues
fuse them already), so this kernel's contract is exactly the reference's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_util import check_device, on_meta

_BLOCK = 1024


@triton.jit
def _swiglu_fwd(UP, GATE, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    u = tl.load(UP + offs, mask=m, other=0.0).to(tl.float32)
    g = tl.load(GATE + offs, mask=m, other=0.0).to(tl.float32)
    y = u * g * tl.sigmoid(g)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _swiglu_bwd(UP, GATE, DY, DUP, DGATE, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    u = tl.load(UP + offs, mask=m, other=0.0).to(tl.float32)
    g = tl.load(GATE + offs, mask=m, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=m, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    silu = g * sig
    tl.store(DUP + offs, (dy * silu).to(DUP.dtype.element_ty), mask=m)
    tl.store(DGATE + offs, (dy * u * sig * (1.0 + g * (1.0 - sig))).to(DGATE.dtype.element_ty), mask=m)


def swiglu_forward(up: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    y = torch.empty(up.shape, dtype=up.dtype, device=up.device)
    n = up.numel()
    if n and not on_meta(up):
        _swiglu_fwd[(triton.cdiv(n, _BLOCK),)](up, gate, y, n, BLOCK=_BLOCK, num_warps=4)
    return y


def swiglu_backward(dy, up, gate):
    dy = dy.contiguous()
    dup = torch.empty(up.shape, dtype=up.dtype, device=up.device)
    dgate = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    n = up.numel()
    if n and not on_meta(up):
        _swiglu_bwd[(triton.cdiv(n, _BLOCK),)](up, gate, dy, dup, dgate, n, BLOCK=_BLOCK, num_warps=4)
    return dup, dgate


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, up, gate):
        check_device(up, gate)
        if up.shape != gate.shape:
            raise ValueError(f"swiglu: up {tuple(up.shape)} and gate {tuple(gate.shape)} differ in shape")
        up, gate = up.contiguous(), gate.contiguous()
        ctx.save_for_backward(up, gate)
        return swiglu_forward(up, gate)

    @staticmethod
    def backward(ctx, dy):
        up, gate = ctx.saved_tensors
        return swiglu_backward(dy, up, gate)


def swiglu_triton(up: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Same contract as `swiglu.swiglu_reference`: output in up's dtype."""
    return SwiGLUFunction.apply(up, gate)
