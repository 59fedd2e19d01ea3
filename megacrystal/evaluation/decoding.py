"""Greedy decoding of a batch of prompts over any `next_tokens(batch) -> ids` function (the engine's,
or a test's model).

The batch is right-padded to its longest sequence: with causal attention a position never sees the
positions after it, so each sequence's next token is read at its own last position, exactly as if
it ran alone (up to float rounding of the batched matmuls).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def greedy_batch(
    next_tokens: Callable[[list[list[int]]], list[int]],
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    decode: Callable[[list[int]], str] | None = None,
    stop_at_newline: bool = False,
) -> list[list[int]]:
    """New tokens after each prompt, until a stop token (not included), `max_new_tokens`, or (with
    `stop_at_newline` and `decode`) the first generated newline."""
    seqs = [list(p) for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    live = [i for i, p in enumerate(seqs) if p]
    stops = set(stop_ids)
    for _ in range(max_new_tokens):
        if not live:
            break
        nxt = next_tokens([seqs[i] for i in live])
        still = []
        for i, t in zip(live, nxt, strict=True):
            t = int(t)
            if t in stops:
                continue
            seqs[i].append(t)
            new[i].append(t)
            if stop_at_newline and decode is not None and "\n" in decode(new[i]):
                continue
            still.append(i)
        live = still
    return new


def one_at_a_time(next_token: Callable[[list[int]], int]) -> Callable[[list[list[int]]], list[int]]:
    """A batch function from a single-sequence one."""
    return lambda batch: [int(next_token(ids)) for ids in batch]
