"""Per-source validation loss and perplexity: the token mean of the training loss over every held-out
sample of each source (or its first `max_samples`), computed by the engine."""

from __future__ import annotations

import math


def source_losses(runner, valid: dict, max_samples: int | None = None, progress=None) -> dict:
    """{source: {loss, perplexity, tokens, samples}}; `runner.loss(samples)` sums over a global batch."""
    out = {}
    n_batch = runner.global_batch
    for name, vset in valid.items():
        n = len(vset) if max_samples is None else min(len(vset), max_samples)
        total, count = 0.0, 0.0
        for start in range(0, n, n_batch):
            batch = [vset[g] for g in range(start, min(n, start + n_batch))]
            s, c = runner.loss(batch)
            total, count = total + s, count + c
            if progress is not None:
                progress(len(batch))
        loss = total / count if count else float("nan")
        out[name] = {
            "loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else float("inf"),
            "tokens": int(count),
            "samples": n,
        }
    return out


def total_samples(valid: dict, max_samples: int | None) -> int:
    return sum(len(v) if max_samples is None else min(len(v), max_samples) for v in valid.values())
