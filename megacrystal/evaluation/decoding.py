"""Greedy decoding over any `next_token(ids) -> id` function (the engine's, or a test's model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def greedy(
    next_token: Callable[[list[int]], int],
    prompt: Sequence[int],
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    decode: Callable[[list[int]], str] | None = None,
    stop_at_newline: bool = False,
) -> list[int]:
    """New tokens after `prompt` until a stop token (not included), `max_new_tokens`, or (with
    `stop_at_newline` and `decode`) the first generated newline."""
    ids = list(prompt)
    new: list[int] = []
    stops = set(stop_ids)
    for _ in range(max_new_tokens):
        nxt = int(next_token(ids))
        if nxt in stops:
            break
        ids.append(nxt)
        new.append(nxt)
        if stop_at_newline and decode is not None and "\n" in decode(new):
            break
    return new
