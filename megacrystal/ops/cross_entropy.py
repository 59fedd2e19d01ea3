"""Per-token cross-entropy in fp32 over the vocabulary; `ignore_index` gives 0 loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_reference(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """logits [..., V] (any float dtype), labels [...] -> per-token loss [...] in fp32."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    loss = F.cross_entropy(flat, labels.reshape(-1), reduction="none", ignore_index=ignore_index)
    return loss.view(labels.shape)
