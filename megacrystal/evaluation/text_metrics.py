"""String scores for generated code: exact match and character-level edit similarity."""

from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


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
