"""Next-token logits of growing sequences through a KV cache, for any caller that decodes step by step.

    step = IncrementalLogits(model)             # a Transformer with embedding and head (pp = 1)
    logits = step(batch)                        # [len(batch), vocab] after each sequence

A call whose sequences each extend one sequence of the previous call by exactly one token (in order;
finished sequences may drop out) feeds only those new tokens to the model; any other batch starts a new
cache with one right-padded prefill. The reuse is decided on the token ids themselves, so the result is
the uncached model's for every caller (up to float rounding), whatever it asks next; a sequence cut to a
window restarts, as the uncached model would. `finish(logits [b, local vocab]) -> [b, vocab]` completes
the logits (a tensor-parallel vocabulary gather); the default cuts the padded vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..ops.precision import widen
from .kv_cache import KVCache


class IncrementalLogits:
    def __init__(self, model, finish: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if not (model.pre_process and model.post_process):
            raise ValueError("KV-cache decoding needs the whole model on one stage (parallel pp=1)")
        self.model = model
        self.vocab_size = model.cfg.vocab_size
        self.max_seq_len = model.cfg.max_seq_len
        self.finish = finish or (lambda x: x[:, : self.vocab_size])
        self.cache: KVCache | None = None
        self.seqs: list[list[int]] = []
        self.prefills = self.steps = 0  # counters (tests, benchmarks)

    def reset(self) -> None:
        """Free the cache."""
        self.cache, self.seqs = None, []

    @torch.no_grad()
    def __call__(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        lengths = [len(x) for x in batch]
        if not batch or min(lengths) < 1 or max(lengths) > self.max_seq_len:
            raise ValueError(
                f"generation: {len(batch)} sequences of lengths {lengths[:8]}, expected 1..{self.max_seq_len} tokens"
            )
        device = next(self.model.parameters()).device
        rows = self._extended_rows(batch)
        if rows is None:
            self.model.eval()
            self.cache = KVCache(len(batch))
            x = torch.zeros((len(batch), max(lengths)), dtype=torch.long)
            for i, ids in enumerate(batch):
                x[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            last = torch.as_tensor(lengths, device=device) - 1
            out = self.model(tokens=x.to(device), kv_cache=self.cache, logits_at=last)
            self.cache.trim(lengths)
            self.prefills += 1
        else:
            self.cache.keep(rows)
            x = torch.tensor([[ids[-1]] for ids in batch], dtype=torch.long, device=device)
            out = self.model(tokens=x, kv_cache=self.cache)
            self.steps += 1
        self.seqs = [list(ids) for ids in batch]
        return widen(self.finish(out[:, 0]))

    def _extended_rows(self, batch) -> list[int] | None:
        """For each sequence of `batch`, the row of the cache it extends by one token (increasing), else None."""
        if self.cache is None or len(batch) > len(self.seqs):
            return None
        rows, r = [], 0
        for ids in batch:
            while r < len(self.seqs) and not (len(ids) == len(self.seqs[r]) + 1 and list(ids[:-1]) == self.seqs[r]):
                r += 1
            if r == len(self.seqs):
                return None
            rows.append(r)
            r += 1
        return rows
