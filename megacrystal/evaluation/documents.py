"""The held-out code documents FIM and completion are scored on: a fixed sample, the same for every
model with the same data (the validation documents of the config's code sources, or every document
of the given files), drawn by a seeded permutation and kept if they have enough lines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.fim import mix, uniform


@dataclass
class CodeDocument:
    source: str
    prefix: str  # indexed file
    index: int  # sequence id in the file
    text: str

    @property
    def key(self) -> int:
        """A stable integer for this document (drives the choice of the scored line)."""
        return mix(*self.source.encode(), *self.prefix.encode(), self.index)

    def lines(self) -> list[str]:
        return self.text.splitlines(keepends=True)


def sample_code_documents(files: list[tuple[str, str, np.ndarray]], tok, n: int, seed: int, min_lines: int = 3):
    """Up to `n` documents from `files` ((source, prefix, sequence ids) of held-out code), in a
    seeded order; a document needs `min_lines` non-blank lines to be kept."""
    from ..data.indexed import IndexedDataset

    cands = [(fi, int(d)) for fi, (_, _, docs) in enumerate(files) for d in docs]
    order = np.random.default_rng(seed).permutation(len(cands)) if cands else []
    opened: dict[int, IndexedDataset] = {}
    out: list[CodeDocument] = []
    for k in order:
        if len(out) >= n:
            break
        fi, d = cands[int(k)]
        source, prefix, _ = files[fi]
        ds = opened.setdefault(fi, IndexedDataset(prefix))
        ids = np.asarray(ds[d]).tolist()  # Python ints, in one call
        if ids and ids[-1] == tok.eod:
            ids = ids[:-1]
        text = tok.decode(ids)
        if sum(1 for line in text.splitlines() if line.strip()) >= min_lines:
            out.append(CodeDocument(source, prefix, d, text))
    return out


def spread_tasks(docs: list[CodeDocument], n: int, make) -> list:
    """Up to `n` tasks, `make(doc, round)` each (None: no task): one per document per round, rounds
    repeated while there are fewer documents than tasks; a (document, line) pair is used once."""
    out, seen = [], set()
    rounds = -(-n // len(docs)) if docs else 0
    for r in range(rounds):
        for d in docs:
            if len(out) >= n:
                return out
            t = make(d, r)
            if t is not None and (d.source, d.prefix, d.index, t.line) not in seen:
                seen.add((d.source, d.prefix, d.index, t.line))
                out.append(t)
    return out


def pick_line(doc: CodeDocument, seed: int, salt: int, ok) -> int | None:
    """A line index of `doc` for which `ok(i)` holds, chosen by a hash of (seed, salt, document);
    lines are tried from that point on, wrapping around."""
    lines = doc.lines()
    if not lines:
        return None
    start = int(uniform(seed, salt, doc.key) * len(lines))
    for j in range(len(lines)):
        i = (start + j) % len(lines)
        if lines[i].strip() and ok(i):
            return i
    return None
