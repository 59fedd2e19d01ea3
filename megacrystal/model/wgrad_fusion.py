"""Gradient-accumulation fusion for the linear layers (`model.grad_accum_fusion`).

`linear(x, weight, bias)` is `F.linear` unless the weight's `ParamSpec.wgrad_fusion` is "torch" or
"cuda" (set by the engine on bf16 weights that have an fp32 `main_grad`). Then the backward writes the
weight gradient straight into `weight.main_grad` (fp32, accumulating over micro-batches): no bf16
weight gradient is allocated and no post-accumulate add runs. Autograd still runs the weight's
post-accumulate hook (with `.grad` None), so the engine's bucket counting and overlapped reduction
see every micro-batch as before (tested).

  cuda   the project's cuBLASLt GEMM (kernels/cuda/wgrad.cu): bf16 inputs, fp32 output with beta = 1
  torch  torch's mixed-dtype `addmm(main_grad, dy^T, x, out_dtype=float32)` on CUDA with torch >= 2.8
         (the same cuBLASLt GEMM class, reached through torch; `grad_accum_fusion: torch` is refused on
         an older torch, `on`/`auto` fall back); elsewhere an fp32 addmm of the upcast inputs
         (exact products of bf16 values, fp32 sums: the same arithmetic class), so CPU tests run it
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..compiled.select import addmm_out_dtype_ok
from .param_spec import param_spec


def accumulate_wgrad(main_grad: torch.Tensor, dy: torch.Tensor, x: torch.Tensor, impl: str) -> None:
    """main_grad[out, in] += dy[T, out]^T @ x[T, in]. The cuBLASLt kernel takes feature sizes that are
    multiples of 8 (16-byte rows, as the model's padded sizes are); others go through torch's GEMM."""
    if impl == "cuda" and dy.shape[-1] % 8 == 0 and x.shape[-1] % 8 == 0:
        from ..compiled.cuda_kernels import library

        library().wgrad_accum(main_grad, dy.contiguous(), x.contiguous())
    elif main_grad.device.type == "cuda" and addmm_out_dtype_ok():
        torch.addmm(main_grad, dy.t(), x, out_dtype=torch.float32, out=main_grad)
    else:  # other devices, and CUDA on torch < 2.8: upcast (the same arithmetic class, more memory traffic)
        main_grad.addmm_(dy.t().float(), x.float())


class _FusedWgradLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, impl):
        ctx.save_for_backward(x, weight)
        ctx.impl, ctx.has_bias = impl, bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dx = dy.matmul(weight) if ctx.needs_input_grad[0] else None
        dy2 = dy.reshape(-1, dy.shape[-1])
        accumulate_wgrad(weight.main_grad, dy2, x.reshape(-1, x.shape[-1]), ctx.impl)
        db = dy2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, None, db, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    spec = getattr(weight, "param_spec", None)  # not `param_spec(weight)`: no spec is created here
    impl = spec.wgrad_fusion if spec is not None else None
    if impl is None or not (torch.is_grad_enabled() and weight.requires_grad):
        return F.linear(x, weight, bias)
    return _FusedWgradLinear.apply(x, weight, bias, impl)


def enable(modules, impl: str) -> int:
    """Mark the weights of the linear layers (`fuses_wgrad` classes) under `modules` that are bf16 and
    have a main_grad for fusion with `impl` ("torch" | "cuda"); returns how many."""
    n = 0
    for root in modules:
        for m in root.modules():
            p = getattr(m, "weight", None) if getattr(m, "fuses_wgrad", False) else None
            if p is not None and p.dtype == torch.bfloat16 and getattr(p, "main_grad", None) is not None:
                param_spec(p).wgrad_fusion = impl
                n += 1
    return n
