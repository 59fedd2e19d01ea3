"""Code completion scoring: the model sees a held-out code document up to the start of one of its
lines (the last tokens that fit, after an EOD when the whole prefix fits, as documents start in
training) and generates greedily until a newline; its first line is compared with the document's
line (text_metrics.line_scores). Only lines shorter than `max_new_tokens` tokens are scored."""

from __future__ import annotations

from dataclasses import dataclass

from .decoding import greedy_batch
from .documents import CodeDocument, pick_line, spread_tasks
from .fim_scoring import local_map, summarize
from .text_metrics import line_scores

COMPLETION_SALT = 11


@dataclass
class _Task:
    doc: CodeDocument
    line: int
    prefix: str
    target: str


def completion_prompt(tok, prefix: str, budget: int) -> list[int]:
    ids = tok.encode(prefix)
    return [tok.eod, *ids] if len(ids) < budget else ids[len(ids) - budget :]


def score_completion(
    docs: list[CodeDocument],
    tok,
    next_tokens,
    max_seq_len: int,
    max_new_tokens: int = 32,
    seed: int = 0,
    examples: int | None = None,
    batch_size: int = 16,
    mapper=None,
    progress=None,
) -> dict:
    """{exact_match, edit_similarity, n, examples}: `examples` lines (default one per document) spread
    over the documents."""
    budget = max_seq_len - max_new_tokens
    if budget < 4:
        raise ValueError(f"completion scoring: max_seq_len {max_seq_len} is too short for {max_new_tokens} new tokens")

    def make(d, r):
        lines = d.lines()

        def ok(i: int) -> bool:  # after a non-blank line; short enough to be generated in full
            return i > 0 and bool(lines[i - 1].strip()) and len(tok.encode(lines[i])) < max_new_tokens

        i = pick_line(d, seed, COMPLETION_SALT + 1000 * r, ok)
        return None if i is None else _Task(d, i, "".join(lines[:i]), lines[i])

    tasks = spread_tasks(docs, len(docs) if examples is None else examples, make)

    def run(batch):
        prompts = [completion_prompt(tok, t.prefix, budget) for t in batch]
        news = greedy_batch(next_tokens, prompts, max_new_tokens, [tok.eod], tok.decode, stop_at_newline=True)
        preds = [tok.decode(n) for n in news]
        return [dict(line_scores(p, t.target), prediction=p) for t, p in zip(batch, preds, strict=True)]

    results = (mapper or local_map)(tasks, run, batch_size, progress)
    out = summarize(results)
    out["examples"] = [
        dict(
            source=t.doc.source,
            document=t.doc.index,
            line=t.line,
            target=t.target,
            prediction=r["prediction"],
            exact_match=r["exact_match"],
        )
        for t, r in zip(tasks, results, strict=True)
    ]
    return out
