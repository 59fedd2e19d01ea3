"""Attention on the meta device: the shapes and saved tensors of a flash-attention kernel, no values.

A rehearsal (`megacrystal rehearse`) runs the model on meta tensors. Torch's SDPA falls back to its
math path there (a [b, h, s, s] score matrix saved for the backward), which is not what a GPU run
holds. This op stands in for the flash kernels the GPU uses: forward (q, k, v) -> (out, logsumexp),
saving q, k, v, out and the fp32 logsumexp [b, hq, s] for its backward, which returns dq, dk, dv
(GQA native: k and v keep their head count). `megacrystal::attention_meta` shows up as one op, so the
rehearsal counts its FLOPs by formula (rehearsal/meta_mode.py).
"""

from __future__ import annotations

import torch

_LIB = "megacrystal::attention_meta"


def _lse_shape(q: torch.Tensor) -> tuple:
    b, s, h, _ = q.shape
    return (b, h, s)


@torch.library.custom_op(_LIB, mutates_args=(), device_types="meta")
def attention_meta_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), q.new_empty(_lse_shape(q), dtype=torch.float32)


@attention_meta_op.register_fake
def _(q, k, v, scale):
    return torch.empty_like(q), q.new_empty(_lse_shape(q), dtype=torch.float32)


@torch.library.custom_op(_LIB + "_backward", mutates_args=(), device_types="meta")
def attention_meta_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@attention_meta_backward.register_fake
def _(dout, q, k, v, out, lse):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, _ = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = attention_meta_backward(dout.contiguous(), q, k, v, out, lse)
    return dq, dk, dv, None


attention_meta_op.register_autograd(_backward, setup_context=_setup)


def attention_meta(q, k, v, scale: float, segment_ids=None) -> torch.Tensor:
    """q [b, s, hq, d], k/v [b, s, hk, d] -> [b, s, hq, d] (document masks change no shape)."""
    return attention_meta_op(q, k, v, float(scale))[0]


def flops(q_shape, k_shape, backward: bool) -> int:
    """Causal attention FLOPs: QK^T and PV are 2·b·hq·s·s·d each, half of them masked; the backward
    does 2.5 times the forward's matmul work (flash-attention's recompute included)."""
    b, s, hq, d = q_shape
    fwd = 2 * 2 * b * hq * s * s * d // 2
    return int(fwd * 2.5) if backward else fwd


def block_flops(b: int, hq: int, lq: int, lk: int, d: int, causal: bool, backward: bool) -> int:
    """One attention block of lq queries and lk keys (ring attention's blocks, SDPA's aten kernels):
    QK^T and PV at 2·b·hq·lq·lk·d each, half of it when `causal` (a square block), the backward 2.5
    times the forward (as `flops`)."""
    fwd = 4 * b * hq * lq * lk * d
    if causal:
        fwd //= 2
    return int(fwd * 2.5) if backward else fwd
