"""Causal self-attention with a configurable score scale (1/d under muP, else 1/sqrt(d)),
optional per-document masking (`segment_ids`), fp32 softmax.

Backends: "math" (the reference), "sdpa" (torch scaled_dot_product_attention). Faster backends
register themselves in `BACKENDS`; "auto" picks the best available for the device and says which once.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..log import say_once


def _expand_kv(k: torch.Tensor, v: torch.Tensor, hq: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = hq // k.shape[2]
    if g > 1:
        k = k.repeat_interleave(g, dim=2)
        v = v.repeat_interleave(g, dim=2)
    return k, v


def _mask(s: int, segment_ids: Optional[torch.Tensor], device) -> torch.Tensor:
    """Boolean [b or 1, 1, s, s]: True where attention is allowed."""
    causal = torch.ones(s, s, dtype=torch.bool, device=device).tril()
    if segment_ids is None:
        return causal[None, None]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (causal[None] & same)[:, None]


def attention_math(q, k, v, scale: float, segment_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q [b, s, hq, d], k/v [b, s, hk, d] -> [b, s, hq, d]; fp32 scores and softmax."""
    k, v = _expand_kv(k, v, q.shape[2])
    qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~_mask(q.shape[1], segment_ids, q.device), float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return torch.matmul(p, vf).transpose(1, 2).to(q.dtype)


def attention_sdpa(q, k, v, scale: float, segment_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    k, v = _expand_kv(k, v, q.shape[2])
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if segment_ids is None:
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale)
    else:
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=_mask(q.shape[1], segment_ids, q.device),
                                           scale=scale)
    return o.transpose(1, 2)


BACKENDS: dict[str, Callable] = {"math": attention_math, "sdpa": attention_sdpa}


def select_backend(requested: str, device: torch.device) -> str:
    if requested != "auto":
        if requested not in BACKENDS:
            raise ValueError(f"model.attention_backend: {requested!r} is not available "
                             f"(available here: {sorted(BACKENDS)})")
        return requested
    return "sdpa"


def attention(q, k, v, scale: float, segment_ids=None, backend: str = "auto") -> torch.Tensor:
    name = select_backend(backend, q.device)
    say_once(f"attention-{name}-{q.device.type}", f"attention backend: {name} on {q.device.type}")
    return BACKENDS[name](q, k, v, scale, segment_ids)
