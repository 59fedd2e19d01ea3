"""Greedy blending of several sources into one sample stream (megatron-core's algorithm).

For t = 0, 1, ...: with x = max(t, 1), the source i maximising w[i]*x - count[i] gives sample t
(ties to the lowest i); the stream records (i, count[i]) and count[i] += 1. At every prefix each
source's count stays within one sample of weight x prefix. `build_blend` returns the same two
arrays as megatron-core's `build_blending_indices` (dataset_index int16, dataset_sample_index
int64); `source_sizes` sizes each source with megatron-core's surplus so it never runs short.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..compiled import native

SURPLUS = 0.005


def normalize(weights: Sequence[float]) -> np.ndarray:
    w = np.array(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(
            f"blend weights: expected non-negative finite numbers with a positive sum, got {list(weights)}"
        )
    return w / np.sum(w)


def source_sizes(weights: Sequence[float], total: int, surplus: float = SURPLUS) -> list[int]:
    """Samples to build per source for a blend of `total`: ceil(ceil(total*w) * (1 + surplus))."""
    return [math.ceil(math.ceil(total * w) * (1 + surplus)) for w in normalize(weights).tolist()]


def build_blend(
    weights: Sequence[float], size: int, start: int = 0, counts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(source int16[size], sample-within-source int64[size]) for stream positions start..start+size-1.

    `weights` are normalised here; `counts` (per source, before `start`) continues a stream.
    """
    w = normalize(weights)
    if len(w) > np.iinfo(np.int16).max:
        raise ValueError(f"blend: {len(w)} sources, at most {np.iinfo(np.int16).max}")
    c = np.zeros(len(w), dtype=np.int64) if counts is None else np.array(counts, dtype=np.int64)
    mod = native.get()
    if mod is not None:
        return mod.build_blend(w, int(size), int(start), c)
    return _blend_python(w, int(size), int(start), c)


def _blend_python(w: np.ndarray, size: int, start: int, c: np.ndarray):
    src = np.empty(size, dtype=np.int16)
    idx = np.empty(size, dtype=np.int64)
    wl = w.tolist()
    cl = [float(v) for v in c]
    k = len(wl)
    for t in range(start, start + size):
        x = float(t) if t > 1 else 1.0
        best, best_err = 0, wl[0] * x - cl[0]
        for i in range(1, k):
            err = wl[i] * x - cl[i]
            if err > best_err:
                best, best_err = i, err
        src[t - start] = best
        idx[t - start] = int(cl[best])
        cl[best] += 1.0
    return src, idx
