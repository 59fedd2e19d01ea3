"""KV cache for incremental decoding: every layer's keys and values of the tokens seen so far, per batch row.

    cache = KVCache(batch=4)
    logits = model(tokens=prompts, kv_cache=cache, logits_at=last)   # prefill [b, s] (right-padded)
    cache.trim(lengths)                                              # each row's true prompt length
    logits = model(tokens=next_ids[:, None], kv_cache=cache)         # one new token per row

Rows advance independently: row i's s new tokens take positions lengths[i] .. lengths[i]+s-1 (their
rotary angles), their keys/values are written at those slots, and each query sees the slots at or before
its own position. Slots past a row's length (right padding of a prefill, or never written) are never
seen and are overwritten as the row grows. A prefill into an empty cache attends exactly as the
uncached model (same backend, same causal call); later calls attend over the cache with an explicit
mask (sdpa, or `math` when the model asks for it), since flash kernels take no per-row offsets.

Buffers are allocated on first use in the model's dtype, [b, width, kv heads of this rank, head_dim]
(a tensor-parallel rank holds only its heads), zero-filled (a masked zero contributes exactly nothing),
and grow by `GROW` slots when a row needs more room. Document masking (segment_ids) is refused:
decode one document per row.
"""

from __future__ import annotations

import torch

from .attention import attention, attention_masked

GROW = 64  # slots added at once when the buffers are too short (amortises the copy)


class KVCache:
    def __init__(self, batch: int):
        if batch < 1:
            raise ValueError(f"KVCache: batch must be >= 1, got {batch}")
        self.batch = batch
        self.lengths: list[int] = [0] * batch  # tokens held per row (host copy: no device sync per step)
        self._k: dict[str, torch.Tensor] = {}
        self._v: dict[str, torch.Tensor] = {}
        self._pos: torch.Tensor | None = None  # positions [b, s] of the forward in progress
        self._mask: torch.Tensor | None = None  # [b, 1, s, width] for it; None for a prefill of an empty cache
        self._width = 0

    # ----------------------------------------------------------------- one forward: begin, attend per layer, end

    def begin(self, batch: int, tokens: int, device: torch.device) -> torch.Tensor:
        """Positions [b, s] of the `tokens` new tokens of each row (the model's rotary positions)."""
        if batch != self.batch:
            raise ValueError(f"KV-cache decoding: a batch of {batch} rows, the cache holds {self.batch}")
        start = torch.tensor(self.lengths, dtype=torch.long, device=device)
        self._pos = start[:, None] + torch.arange(tokens, device=device)
        self._width = max(self.lengths) + tokens
        if max(self.lengths) == 0:
            self._mask = None
        else:
            slots = torch.arange(self._width, device=device)
            self._mask = (slots[None, None, :] <= self._pos[:, :, None])[:, None]
        return self._pos

    def attend(self, layer: str, q, k, v, scale: float, backend: str) -> torch.Tensor:
        """Store this layer's new k/v [b, s, hk, d] and attend q [b, s, hq, d] over the row's tokens."""
        if self._pos is None:
            raise RuntimeError("KVCache.attend outside a forward (call begin first)")
        kb, vb = self._buffers(layer, k)
        s = k.shape[1]
        if self._mask is None:
            kb[:, :s], vb[:, :s] = k, v
            return attention(q, k, v, scale, None, backend)
        rows = torch.arange(self.batch, device=k.device)[:, None]
        kb[rows, self._pos], vb[rows, self._pos] = k, v
        w = self._width
        return attention_masked(q, kb[:, :w], vb[:, :w], scale, self._mask, backend)

    def end(self) -> None:
        s = self._pos.shape[1]
        self.lengths = [n + s for n in self.lengths]
        self._pos = self._mask = None

    # ----------------------------------------------------------------- between forwards

    def trim(self, lengths: list[int]) -> None:
        """Keep only the first lengths[i] tokens of each row (a right-padded prefill's true lengths)."""
        if len(lengths) != self.batch or any(not 0 <= n <= m for n, m in zip(lengths, self.lengths, strict=True)):
            raise ValueError(f"KVCache.trim: lengths {lengths} not within the held {self.lengths}")
        self.lengths = list(lengths)

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order): the sequences still being decoded."""
        if rows == list(range(self.batch)):
            return
        if not rows:
            raise ValueError("KVCache.keep: no rows left (start a new cache instead)")
        for store in (self._k, self._v):
            for name, buf in store.items():
                store[name] = buf[torch.as_tensor(rows, device=buf.device)]
        self.lengths = [self.lengths[r] for r in rows]
        self.batch = len(rows)

    def _buffers(self, layer: str, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kb = self._k.get(layer)
        if kb is None or kb.shape[1] < self._width:
            width = -(-self._width // GROW) * GROW
            new_k = k.new_zeros((self.batch, width, *k.shape[2:]))
            new_v = torch.zeros_like(new_k)
            if kb is not None:
                new_k[:, : kb.shape[1]] = kb
                new_v[:, : kb.shape[1]] = self._v[layer]
            self._k[layer], self._v[layer] = new_k, new_v
        return self._k[layer], self._v[layer]
