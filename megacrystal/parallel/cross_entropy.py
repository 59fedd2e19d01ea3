"""Vocab-parallel cross-entropy in fp32, built from the two per-shard pieces of `ops.cross_entropy`
(`ce_stats`, `ce_grad`: Triton kernels on CUDA, torch twins elsewhere).

Each tp rank holds logits for a contiguous slice of the (padded) vocabulary, [..., V/tp]. Per token:
    m, s, t = ce_stats(shard)          local max, sum exp(x - m), target logit (0 off this shard)
    M = all-reduce MAX of m;  S = all-reduce SUM of s * exp(m - M);  T = all-reduce SUM of t
    loss = M + log S - T               (0 where label == -100)
Backward: ce_grad(shard, lse) = (softmax - onehot) * dloss, no communication. The two sums travel in
one all-reduce. Only the input logits (any dtype) and a few fp32 numbers per token are kept: the
Triton kernels stream over the vocabulary, and the torch twins are run on chunks of about
`chunk_elements` logits, so an fp32 copy of the whole batch's logits never exists. Padded vocabulary
entries carry -inf logits from the head and get probability 0.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..log import say_once
from ..ops.cross_entropy import ce_grad_reference, ce_stats_reference, rescale_sumexp
from ..ops.precision import wide_dtype, widen
from . import collectives as C
from .state import Group

IGNORE = -100


def _pieces(impl: str, device_type: str):
    """(name, ce_stats, ce_grad, chunk rows?) for `model.kernels` = impl on this device."""
    want_triton = impl == "triton" or (impl == "auto" and device_type in ("cuda", "meta"))  # meta: a rehearsal
    if want_triton:
        if (
            impl == "triton"
            and device_type not in ("cuda", "meta")
            and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
        ):
            raise RuntimeError(
                "model.kernels=triton on cpu: set TRITON_INTERPRET=1 (before triton is imported) "
                "or use model.kernels=torch/auto"
            )
        try:
            from ..ops.triton_cross_entropy import ce_grad, ce_stats

            return "triton", ce_stats, ce_grad, False
        except ImportError as e:
            if impl == "triton":
                raise RuntimeError(f"model.kernels=triton but the Triton cross-entropy is unavailable ({e})") from None
    return "torch", ce_stats_reference, ce_grad_reference, True


def _spans(n: int, rows: int):
    for a in range(0, n, rows):
        yield a, min(n, a + rows)


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, group: Group, chunk_elements: int, impl: str):
        V = logits.shape[-1]
        flat = logits.reshape(-1, V)
        lab = labels.reshape(-1).to(flat.device)
        n, start = flat.shape[0], group.rank * V
        name, stats, grad_fn, chunked = _pieces(impl, flat.device.type)
        say_once(
            f"vp-ce-{name}-{flat.device.type}", f"vocab-parallel cross-entropy: {name} pieces on {flat.device.type}"
        )
        rows = max(1, chunk_elements // max(V, 1)) if chunked else max(n, 1)
        m = torch.empty(n, dtype=wide_dtype(flat.dtype), device=flat.device)
        st = torch.empty(2, n, dtype=wide_dtype(flat.dtype), device=flat.device)
        for a, b in _spans(n, rows):
            m[a:b], st[0, a:b], st[1, a:b] = stats(flat[a:b], lab[a:b], start, IGNORE)
        big = m.clone()
        C.all_reduce(big, group, op=dist.ReduceOp.MAX)
        st[0] = rescale_sumexp(m, st[0], big)
        C.all_reduce(st, group)
        lse = big + st[0].log()
        loss = torch.where(lab == IGNORE, torch.zeros_like(lse), lse - st[1])
        ctx.save_for_backward(logits, lab, lse)
        ctx.rows, ctx.grad_fn, ctx.start = rows, grad_fn, start
        return loss.view(labels.shape)

    @staticmethod
    def backward(ctx, dloss):
        logits, lab, lse = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        d = widen(dloss.reshape(-1)).contiguous()
        grad = torch.empty_like(flat)
        for a, b in _spans(flat.shape[0], ctx.rows):
            grad[a:b] = ctx.grad_fn(flat[a:b], lab[a:b], lse[a:b], d[a:b], ctx.start, IGNORE)
        return grad.view_as(logits), None, None, None, None


def vocab_parallel_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, group: Group, chunk_elements: int = 1 << 24, impl: str = "auto"
) -> torch.Tensor:
    """logits [..., V/tp] (this rank's vocabulary slice), labels [...] global ids (-100: ignored)
    -> fp32 per-token loss [...], the same on every tp rank."""
    return _VocabParallelCE.apply(logits, labels, group, int(chunk_elements), impl)
