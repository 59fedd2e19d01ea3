"""Fill-in-the-middle scoring: one line of a held-out code document is removed; the model, prompted
with the document's prefix and suffix in its own FIM layout, generates the middle greedily.

    PSM: [EOD] <fim_prefix> prefix <fim_suffix> suffix <fim_middle>   -> middle
    SPM: [EOD] <fim_prefix> <fim_suffix> suffix <fim_middle> prefix   -> middle

These are the layouts the trainer's FIM transform (data/fim.py) writes, after the EOD that ends the
previous document. Prefix, middle and suffix are encoded separately, as in training; the prefix keeps
its last tokens and the suffix its first ones so prompt + generation fit the model's context. The
same line is scored in both modes. Generation stops at EOD, at any FIM token, at the first newline,
or after `max_new_tokens`; the first generated line is compared with the removed line (see
text_metrics.line_scores).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .decoding import greedy_batch
from .documents import CodeDocument, pick_line, spread_tasks
from .text_metrics import line_scores

MODES = ("psm", "spm")
FIM_SALT = 7


@dataclass
class InfillTask:
    doc: CodeDocument
    line: int
    prefix: str
    middle: str
    suffix: str


def infill_task(doc: CodeDocument, tok, seed: int, max_middle_tokens: int, round_: int = 0) -> InfillTask | None:
    lines = doc.lines()

    def ok(i: int) -> bool:
        return 0 < i < len(lines) - 1 and len(tok.encode(lines[i])) < max_middle_tokens

    i = pick_line(doc, seed, FIM_SALT + 1000 * round_, ok)
    if i is None:
        return None
    return InfillTask(doc, i, "".join(lines[:i]), lines[i], "".join(lines[i + 1 :]))


def fim_prompt(tok, prefix: str, suffix: str, mode: str, budget: int, encode=None) -> list[int]:
    """The prompt ids for `mode` with at most `budget` prefix + suffix tokens (`encode`: tok.encode, or
    a memo of it: both modes of a line share the encodings)."""
    sp = tok.special
    encode = encode or tok.encode
    pre, suf = encode(prefix), encode(suffix)
    half = budget // 2
    n_suf = min(len(suf), max(half, budget - len(pre)))
    n_pre = min(len(pre), budget - n_suf)
    pre, suf = pre[len(pre) - n_pre :], suf[:n_suf]
    if mode == "psm":
        return [tok.eod, sp["fim_prefix"], *pre, sp["fim_suffix"], *suf, sp["fim_middle"]]
    if mode == "spm":
        return [tok.eod, sp["fim_prefix"], sp["fim_suffix"], *suf, sp["fim_middle"], *pre]
    raise ValueError(f"FIM mode: expected one of {MODES}, got {mode!r}")


def fim_token_problem(tok) -> str | None:
    missing = [n for n in ("fim_prefix", "fim_middle", "fim_suffix") if n not in tok.special]
    if missing:
        return f"{tok.path}: the tokenizer has no {', '.join('<' + m + '>' for m in missing)} token (FIM scoring)"
    return None


def score_fim(
    docs: list[CodeDocument],
    tok,
    next_tokens,
    max_seq_len: int,
    max_new_tokens: int = 32,
    seed: int = 0,
    examples: int | None = None,
    modes=MODES,
    batch_size: int = 16,
    mapper=None,
    progress=None,
) -> dict:
    """{mode: {exact_match, edit_similarity, n}, "examples": [...]}: `examples` lines (default one per
    document) spread over the documents (several lines of a document when there are fewer documents).
    `next_tokens(batch of id lists) -> ids` is the model (greedy); `mapper(items, fn, batch_size,
    progress)` may spread the work over ranks (default: batches in this process)."""
    problem = fim_token_problem(tok)
    if problem:
        raise ValueError(problem)
    budget = max_seq_len - max_new_tokens - 5
    if budget < 8:
        raise ValueError(f"FIM scoring: max_seq_len {max_seq_len} leaves {budget} prompt tokens after {max_new_tokens}")
    n = len(docs) if examples is None else examples
    tasks = spread_tasks(docs, n, lambda d, r: infill_task(d, tok, seed, max_new_tokens, r))
    stops = [tok.eod] + [v for k, v in tok.special.items() if k.startswith("fim_")]
    jobs = [(t, m) for t in tasks for m in modes]
    encode = functools.lru_cache(maxsize=4 * batch_size)(lambda text: tuple(tok.encode(text)))

    def run(batch):
        prompts = [fim_prompt(tok, t.prefix, t.suffix, mode, budget, encode) for t, mode in batch]
        news = greedy_batch(next_tokens, prompts, max_new_tokens, stops, tok.decode, stop_at_newline=True)
        preds = [tok.decode(n) for n in news]
        return [dict(line_scores(p, t.middle), prediction=p) for (t, _), p in zip(batch, preds, strict=True)]

    results = (mapper or local_map)(jobs, run, batch_size, progress)
    out: dict = {}
    for mode in modes:
        rs = [r for (_, m), r in zip(jobs, results, strict=True) if m == mode]
        out[mode] = summarize(rs)
    out["examples"] = [
        dict(
            source=t.doc.source,
            document=t.doc.index,
            line=t.line,
            mode=m,
            middle=t.middle,
            prediction=r["prediction"],
            exact_match=r["exact_match"],
        )
        for (t, m), r in zip(jobs, results, strict=True)
    ]
    return out


def summarize(rs: list[dict]) -> dict:
    n = len(rs)
    return {
        "exact_match": sum(r["exact_match"] for r in rs) / n if n else None,
        "edit_similarity": sum(r["edit_similarity"] for r in rs) / n if n else None,
        "n": n,
    }


def local_map(items: list, fn, batch_size: int, progress=None) -> list:
    """fn over `items` in batches (fn takes a list, returns a list of the same length)."""
    out = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        out.extend(fn(chunk))
        if progress is not None:
            progress(len(chunk))
    return out
