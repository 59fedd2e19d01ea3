"""String scores for generated code: exact match and character-level edit similarity."""

from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each), bit-parallel
    (Myers 1999, in Hyyro's form for the global distance): one pass over `a` with `b`'s DP column held
    in the bits of two integers, exact for any lengths (Python integers have no width limit)."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, c in enumerate(b):
        peq[c] = peq.get(c, 0) | (1 << i)
    mask, last = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for c in a:
        eq = peq.get(c, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & mask
        mh = pv & xh
        if ph & last:
            score += 1
        elif mh & last:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv
    return score


def edit_similarity(pred: str, target: str) -> float:
    """1 - distance / max(len): 1.0 for equal strings, 0.0 for nothing in common."""
    n = max(len(pred), len(target))
    return 1.0 if n == 0 else 1.0 - levenshtein(pred, target) / n


def first_line(text: str) -> str:
    """The text up to (not including) its first newline."""
    return text.split("\n", 1)[0]


def line_scores(pred: str, target: str) -> dict:
    """A generated line against the reference line: both cut at the first newline, trailing
    whitespace ignored (an indentation or content difference counts, a missing final space does not)."""
    p, t = first_line(pred).rstrip(), first_line(target).rstrip()
    return {"exact_match": float(p == t), "edit_similarity": edit_similarity(p, t)}
