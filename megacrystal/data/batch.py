"""One micro-batch as the engine takes it: the per-sample arrays stacked into tensors, plus the
document boundaries over the flattened batch (for varlen attention kernels)."""

from __future__ import annotations

import numpy as np
import torch

SAMPLE_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids")


def collate(samples: list[dict]) -> dict:
    out = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in SAMPLE_KEYS}
    for k in ("source_id", "phase_id", "sample_id"):
        out[k] = torch.tensor([int(s[k]) for s in samples], dtype=torch.int64)
    return finish_batch(out)


def finish_batch(mb: dict) -> dict:
    """Add cu_seqlens (document boundaries over the flattened batch) and max_seqlen from segment_ids."""
    seg = mb["segment_ids"]
    b, s = seg.shape
    # a document starts at position 0 of each sample and wherever the segment number changes
    starts = torch.ones_like(seg, dtype=torch.bool)
    starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
    pos = torch.nonzero(starts.reshape(-1)).reshape(-1).to(torch.int32)
    cu = torch.cat([pos, torch.tensor([b * s], dtype=torch.int32, device=pos.device)])
    mb["cu_seqlens"] = cu
    mb["max_seqlen"] = int((cu[1:] - cu[:-1]).max())
    return mb
