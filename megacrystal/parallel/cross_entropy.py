"""Vocab-parallel cross-entropy in fp32, chunked over tokens.

Each tp rank holds logits for a contiguous slice of the (padded) vocabulary, [..., V/tp]. Per token:
    m   = max over the whole vocabulary          (all-reduce MAX of the local maxima)
    Z   = sum exp(x - m) over the whole vocabulary (all-reduce SUM, together with the target logit,
                                                  which only the rank owning the label contributes)
    loss = log Z + m - x[label]
Backward: softmax - onehot, recomputed from the saved logits. Rows are processed in chunks of
about `chunk_elements` logits, so the fp32 copy of the logits never exists for the whole batch:
only the input logits (any dtype) and two fp32 numbers per token are kept. Labels < 0 (e.g. the
usual ignore index -100) give loss 0 and no gradient. Padded vocabulary entries carry -inf logits
from the head and so get probability 0.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from . import collectives as C
from .state import Group


def _chunks(n: int, rows: int):
    for a in range(0, n, rows):
        yield a, min(n, a + rows)


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, group: Group, chunk_elements: int):
        V = logits.shape[-1]
        flat = logits.reshape(-1, V)
        lab = labels.reshape(-1).to(flat.device)
        n = flat.shape[0]
        rows = max(1, chunk_elements // max(V, 1))
        local = lab - group.rank * V
        inside = (local >= 0) & (local < V) & (lab >= 0)
        idx = local.clamp(0, V - 1).unsqueeze(1)

        m = torch.empty(n, dtype=torch.float32, device=flat.device)
        for a, b in _chunks(n, rows):
            m[a:b] = flat[a:b].float().amax(-1)
        C.all_reduce(m, group, op=dist.ReduceOp.MAX)

        stats = torch.empty(2, n, dtype=torch.float32, device=flat.device)
        for a, b in _chunks(n, rows):
            x = flat[a:b].float()
            stats[0, a:b] = (x - m[a:b, None]).exp().sum(-1)
            target = x.gather(1, idx[a:b]).squeeze(1)
            stats[1, a:b] = torch.where(inside[a:b], target, torch.zeros_like(target))
        C.all_reduce(stats, group)

        lse = stats[0].log() + m
        ignore = lab < 0
        loss = (lse - stats[1]).masked_fill(ignore, 0.0)
        ctx.save_for_backward(logits, idx, inside, ignore, lse)
        ctx.rows = rows
        return loss.view(labels.shape)

    @staticmethod
    def backward(ctx, grad_loss):
        logits, idx, inside, ignore, lse = ctx.saved_tensors
        V = logits.shape[-1]
        flat = logits.reshape(-1, V)
        g = grad_loss.reshape(-1).float().masked_fill(ignore, 0.0)
        onehot = inside.to(torch.float32).unsqueeze(1)
        grad = torch.empty_like(flat)
        for a, b in _chunks(flat.shape[0], ctx.rows):
            p = (flat[a:b].float() - lse[a:b, None]).exp()
            p.scatter_add_(1, idx[a:b], -onehot[a:b])
            grad[a:b] = (p * g[a:b, None]).to(grad.dtype)
        return grad.view_as(logits), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, group: Group,
                                 chunk_elements: int = 1 << 24) -> torch.Tensor:
    """logits [..., V/tp] (this rank's vocabulary slice), labels [...] global ids -> fp32 loss [...]."""
    return _VocabParallelCE.apply(logits, labels, group, int(chunk_elements))
