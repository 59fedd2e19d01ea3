"""Per-token cross-entropy in fp32 over the vocabulary; `ignore_index` gives 0 loss.

Besides the whole op, the two pieces a vocab-parallel loss is built from (see triton_cross_entropy.py
for the recipe), in plain torch with the same signatures as the Triton ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import widen


def cross_entropy_reference(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """logits [..., V] (any float dtype), labels [...] -> per-token loss [...] in fp32."""
    flat = widen(logits.reshape(-1, logits.shape[-1]))
    loss = F.cross_entropy(flat, labels.reshape(-1), reduction="none", ignore_index=ignore_index)
    return loss.view(labels.shape)


def ce_stats_reference(logits: torch.Tensor, labels: torch.Tensor, vocab_start: int = 0, ignore_index: int = -100):
    """logits [rows, V_local] holding global ids [vocab_start, vocab_start+V_local) -> fp32 (row max,
    Σ exp(x − max), target logit where the label falls in this block else 0)."""
    x = widen(logits)
    mx = x.max(-1).values
    shift = torch.where(torch.isneginf(mx), torch.zeros_like(mx), mx)
    se = torch.exp(x - shift[:, None]).sum(-1)
    local = labels - vocab_start
    here = (labels != ignore_index) & (local >= 0) & (local < x.shape[-1])
    tgt = x.gather(-1, torch.where(here, local, 0)[:, None]).squeeze(-1)
    return mx, se, torch.where(here, tgt, torch.zeros_like(tgt))


def ce_grad_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    dloss: torch.Tensor,
    vocab_start: int = 0,
    ignore_index: int = -100,
) -> torch.Tensor:
    """(softmax − onehot(label)) · dloss over this block, in the logits' dtype; 0 rows at ignore_index."""
    p = torch.exp(widen(logits) - lse[:, None])
    local = labels - vocab_start
    here = (labels != ignore_index) & (local >= 0) & (local < logits.shape[-1])
    # subtract the one-hot without data-dependent indexing (no device sync, same shapes every time):
    # rows whose label is elsewhere add 0 at column 0
    p.scatter_add_(1, torch.where(here, local, 0)[:, None], -here.to(p.dtype)[:, None])
    g = torch.where(labels == ignore_index, torch.zeros_like(widen(dloss)), widen(dloss))
    return (p * g[:, None]).to(logits.dtype)


def rescale_sumexp(m: torch.Tensor, s: torch.Tensor, global_max: torch.Tensor) -> torch.Tensor:
    """s·exp(m − M), with shards that hold only -inf logits contributing 0."""
    return torch.where(torch.isneginf(m), torch.zeros_like(s), s * torch.exp(m - global_max))
