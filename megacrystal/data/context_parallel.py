"""Context parallelism on the host: each cp rank's part of every sequence, as data.

A sequence of s tokens is cut into 2·cp chunks of c = s / (2·cp); cp rank r keeps chunks r and
2·cp−1−r, in that order (cp=2: rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2). Under causal
attention a late chunk has more keys to look at than an early one, so pairing chunk r with its mirror
gives every rank the same work. Every per-token array follows: tokens, labels, loss mask, position ids
(RoPE uses the true positions: the global index, or the position within the document when positions
restart at each document) and segment ids (global document numbers, unchanged). Document boundaries
go to the ring attention as `cp_doc_start`: for each kept token, the global index of the first token
of its document (0 without documents); a query at global index i may see key j iff
doc_start(i) <= j <= i, which needs nothing from the key's rank but its chunk numbers.

The split is computed here, on the host, once per micro-batch (no device sync, no `nonzero` in the
attention path); the result travels to the device with the batch. `cp_split` = (rank, size) marks a
micro-batch as cut, so the engine can refuse one that is not (or that was cut for another rank).
"""

from __future__ import annotations

import numpy as np
import torch

from .batch import collate

PER_TOKEN = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids")


def chunks_of(cp_rank: int, cp_size: int) -> tuple[int, int]:
    """The two chunk numbers (of 2·cp) cp rank `cp_rank` holds."""
    return cp_rank, 2 * cp_size - 1 - cp_rank


def local_positions(seq_length: int, cp_rank: int, cp_size: int) -> np.ndarray:
    """Global indices (int64 [seq_length / cp]) of the tokens cp rank `cp_rank` holds, in its order."""
    if seq_length % (2 * cp_size):
        raise ValueError(f"context parallel: sequence length {seq_length} is not divisible by 2*cp = {2 * cp_size}")
    c = seq_length // (2 * cp_size)
    a, b = chunks_of(cp_rank, cp_size)
    return np.concatenate([np.arange(a * c, (a + 1) * c), np.arange(b * c, (b + 1) * c)]).astype(np.int64)


def document_starts(segment_ids: torch.Tensor) -> torch.Tensor:
    """int64 [b, s]: for each token, the index of the first token of its run of equal segment ids."""
    b, s = segment_ids.shape
    starts = torch.ones(b, s, dtype=torch.bool, device=segment_ids.device)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    idx = torch.arange(s, dtype=torch.int64, device=segment_ids.device).expand(b, s)
    return torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values


def split_micro_batch(mb: dict, cp_rank: int, cp_size: int) -> dict:
    """This cp rank's part of a micro-batch of whole sequences (tensors [b, s], as `collate` makes
    them); per-sample entries are kept, whole-sequence document offsets (`cu_seqlens`) dropped."""
    if cp_size == 1:
        return mb
    if mb.get("cp_split") is not None:
        raise ValueError(f"context parallel: micro-batch already split for cp rank/size {mb['cp_split']}")
    tokens = mb["tokens"]
    b, s = tokens.shape
    idx = torch.from_numpy(local_positions(s, cp_rank, cp_size)).to(tokens.device)  # (DALI may hand CUDA tensors)
    out = {k: v for k, v in mb.items() if k not in PER_TOKEN and k not in ("cu_seqlens", "max_seqlen")}
    for k in PER_TOKEN:
        if mb.get(k) is not None:
            out[k] = mb[k].index_select(1, idx).contiguous()
    if mb.get("position_ids") is None:
        out["position_ids"] = idx.expand(b, -1).contiguous()
    if mb.get("segment_ids") is not None:
        out["cp_doc_start"] = document_starts(mb["segment_ids"]).index_select(1, idx).contiguous()
    out["cp_split"] = (cp_rank, cp_size)
    return out


class CollateForRank:
    """`collate`, then this cp rank's part (picklable: a DataLoader worker's collate_fn)."""

    def __init__(self, cp_rank: int, cp_size: int):
        self.cp_rank, self.cp_size = cp_rank, cp_size

    def __call__(self, samples: list[dict]) -> dict:
        return split_micro_batch(collate(samples), self.cp_rank, self.cp_size)
