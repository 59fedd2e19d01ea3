"""Fill-in-the-middle on the fly, per document piece, deterministic (CRYSTAL.md §3).

Each document piece of a code-source sample is transformed with probability `rate`. The draw is
a hash of (seed, phase, file, occurrence, document): the occurrence is the piece's position in
the epoch-expanded document index, so every epoch's copy of a document draws anew, and all pieces
of one occurrence share the decision. A transformed piece:
  text = decode(piece without its trailing EOD); two uniform character positions lo <= hi
  (hashed with the piece offset as well) split it into prefix / middle / suffix, each re-encoded;
  PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle [EOD]
  SPM (probability spm_rate): <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle [EOD]
The pieces are joined again in order and the sample is cut back to seq_len + 1 tokens (the few
tokens the sentinels add fall off the end of the sample) or padded to it with <fim_pad>, which is
masked out of the loss. Every FIM piece that is not cut by the end of the sample is complete.

Decode and encode run in the tokenizer's native code on whole pieces (no Python per token).
Re-encoding follows the preprocessing rule: text never becomes a control token (`tok.control_ids`:
EOD, FIM, ... are placed by the pipeline only). A piece that holds control ids in its body (data
preprocessed with --allow-special-in-text) keeps them: each counts as one position for the cut
points and is copied as its id, and only the text between them is decoded and re-encoded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

M64 = (1 << 64) - 1
FIM_TOKENS = ("fim_prefix", "fim_middle", "fim_suffix", "fim_pad")


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def mix(*values: int) -> int:
    """A 64-bit hash of a tuple of integers (counter-based randomness)."""
    h = 0x6A09E667F3BCC908
    for v in values:
        h = _splitmix(h ^ (int(v) & M64))
    return h


def uniform(*values: int) -> float:
    return (mix(*values) >> 11) * (1.0 / (1 << 53))


def file_key(source: str, file_index: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{source}/{file_index}".encode(), digest_size=8).digest(), "little")


@dataclass
class FimPiece:
    """What happened to one piece (for inspection and tests)."""

    start: int  # position of the piece in the output sample
    length: int  # its length there (after FIM, after the cut at the sample end)
    mode: str  # "psm" | "spm" | "none"
    lo: int = 0  # character cut points in the decoded text
    hi: int = 0
    cut: int = 0  # tokens of the piece that fell off the end of the sample
    parts: tuple = ()  # (prefix, middle, suffix) token counts of the re-encoded parts


class FIM:
    def __init__(self, tokenizer, seed: int):
        missing = [n for n in FIM_TOKENS if n not in tokenizer.special]
        if missing:
            raise ValueError(
                f"{tokenizer.path}: the tokenizer has no {', '.join('<' + m + '>' for m in missing)} "
                f"token(s), needed for FIM (fim_rate > 0)"
            )
        self.tok = tokenizer
        self.seed = int(seed)
        self.prefix_id, self.middle_id, self.suffix_id, self.pad_id = (tokenizer.special[n] for n in FIM_TOKENS)
        self.eod = tokenizer.eod
        ctrl = sorted(getattr(tokenizer, "control_ids", ()) or ())
        self._controls = np.asarray(ctrl, dtype=np.int64) if ctrl else None

    def _units(self, body: np.ndarray) -> list:
        """The body as decoded text runs (str) and control ids (int), in order."""
        units, run = [], []
        for t in body.tolist():
            if t in self.tok.control_ids:
                if run:
                    units.append(self.tok.decode(run))
                    run = []
                units.append(t)
            else:
                run.append(t)
        if run:
            units.append(self.tok.decode(run))
        return units

    def _encode_span(self, units: list, lo: int, hi: int) -> list[int]:
        """Ids of positions [lo, hi) of `units` (a control id is one position, kept as it is)."""
        out: list[int] = []
        at = 0
        for u in units:
            n = len(u) if isinstance(u, str) else 1
            a, b = max(lo, at), min(hi, at + n)
            if a < b:
                out += self.tok.encode(u[a - at : b - at]) if isinstance(u, str) else [u]
            at += n
        return out

    def decide(self, phase: int, fkey: int, position: int, document: int, rate: float) -> bool:
        return rate > 0 and uniform(self.seed, 1, phase, fkey, position, document) < rate

    def apply(
        self, tokens: np.ndarray, parts: Sequence, rate: float, spm_rate: float, phase: int, fkey: int
    ) -> tuple[np.ndarray, list[FimPiece]]:
        """FIM over the pieces of one sample (`parts`: SamplePart-like with document/position/offset/length).

        Returns the new sample (same length) and one FimPiece per piece still in it.
        """
        pieces, modes = [], []
        at = 0
        changed = False
        for p in parts:
            piece = tokens[at : at + p.length]
            done = None
            if self.decide(phase, fkey, p.position, p.document, rate):
                done = self._transform(piece, phase, fkey, p, spm_rate)
            if done is None:
                pieces.append(piece)
                modes.append(("none", 0, 0))
            else:
                pieces.append(done[0])
                modes.append(done[1:])
                changed = True
            at += p.length
        if not changed:
            return tokens, [FimPiece(s, n, "none") for s, n in _starts([len(x) for x in pieces])]
        n = len(tokens)
        out = np.concatenate(pieces)
        report = []
        for (start, length), (mode, lo, hi, *counts) in zip(_starts([len(x) for x in pieces]), modes, strict=True):
            if start >= n:
                break
            kept = min(length, n - start)
            report.append(FimPiece(start, kept, mode, lo, hi, length - kept, tuple(counts)))
        if len(out) >= n:
            out = out[:n]
        else:
            out = np.concatenate([out, np.full(n - len(out), self.pad_id, dtype=out.dtype)])
        return out, report

    def _transform(self, piece: np.ndarray, phase: int, fkey: int, p, spm_rate: float):
        n = len(piece)
        body_len = n - 1 if n and int(piece[-1]) == self.eod else n
        if body_len < 1:
            return None
        body = piece[:body_len]
        if self._controls is not None and np.isin(body, self._controls).any():
            units = self._units(body)
            size = sum(len(u) if isinstance(u, str) else 1 for u in units)
        else:
            units = None
            text = self.tok.decode(body.tolist())
            size = len(text)
        if not size:
            return None
        key = (self.seed, 2, phase, fkey, p.position, p.document, p.offset)
        a = int(uniform(*key, 0) * (size + 1))
        b = int(uniform(*key, 1) * (size + 1))
        lo, hi = (a, b) if a <= b else (b, a)
        if units is None:
            pre, mid, suf = self.tok.encode_batch([text[:lo], text[lo:hi], text[hi:]])
        else:
            pre, mid, suf = (self._encode_span(units, x, y) for x, y in ((0, lo), (lo, hi), (hi, size)))
        spm = uniform(*key, 2) < spm_rate
        if spm:
            layout = [self.prefix_id, self.suffix_id, *suf, self.middle_id, *pre, *mid]
        else:
            layout = [self.prefix_id, *pre, self.suffix_id, *suf, self.middle_id, *mid]
        new = np.empty(len(layout) + n - body_len, dtype=piece.dtype)
        new[: len(layout)] = layout
        new[len(layout) :] = piece[body_len:]
        return new, "spm" if spm else "psm", lo, hi, len(pre), len(mid), len(suf)


def _starts(lengths):
    at = 0
    for n in lengths:
        yield at, n
        at += n


def unpermute(tok, layout: Sequence[int], piece: FimPiece) -> str:
    """Text of a FIM piece put back in order (prefix + middle + suffix), each part decoded on its own
    (for tests and inspection). `layout` starts with the piece's first token."""
    ids = [int(i) for i in layout]
    n_pre, n_mid, n_suf = piece.parts
    if piece.mode == "psm":  # P pre S suf M mid
        pre = ids[1 : 1 + n_pre]
        suf = ids[2 + n_pre : 2 + n_pre + n_suf]
        mid = ids[3 + n_pre + n_suf : 3 + n_pre + n_suf + n_mid]
    else:  # P S suf M pre mid
        suf = ids[2 : 2 + n_suf]
        pre = ids[3 + n_suf : 3 + n_suf + n_pre]
        mid = ids[3 + n_suf + n_pre : 3 + n_suf + n_pre + n_mid]
    return tok.decode(pre) + tok.decode(mid) + tok.decode(suf)
