"""Fill-in-the-middle on the fly, per document piece, deterministic (CRYSTAL.md §3).

Each document piece of a code-source sample is transformed with probability `rate`. The draw is
a hash of (seed, phase, file, occurrence, document): the occurrence is the piece's position in
the epoch-expanded document index, so every epoch's copy of a document draws anew, and all pieces
of one occurrence share the decision. A transformed piece:
  text = decode(piece without its trailing EOD); two uniform character positions lo <= hi
  (hashed with the piece offset as well) split it into prefix / middle / suffix, each re-encoded;
  PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
  SPM (probability spm_rate): <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle
  then cut to the piece's original length (the end of the layout is dropped) or padded with
  <fim_pad> to it, and the EOD put back. So every piece keeps its length, the sample stays
  seq_len + 1 tokens and document boundaries do not move; padding is masked out of the loss.

Decode and encode run in the tokenizer's native code on whole pieces (no Python per token).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

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
    start: int          # position of the piece in the sample
    length: int
    mode: str           # "psm" | "spm" | "none"
    lo: int = 0         # character cut points in the decoded text
    hi: int = 0
    truncated: int = 0  # tokens of the layout dropped to keep the length
    padded: int = 0     # <fim_pad> tokens added to keep the length


class FIM:
    def __init__(self, tokenizer, seed: int):
        missing = [n for n in FIM_TOKENS if n not in tokenizer.special]
        if missing:
            raise ValueError(f"{tokenizer.path}: the tokenizer has no {', '.join('<' + m + '>' for m in missing)} "
                             f"token(s), needed for FIM (fim_rate > 0)")
        self.tok = tokenizer
        self.seed = int(seed)
        self.prefix_id, self.middle_id, self.suffix_id, self.pad_id = (tokenizer.special[n] for n in FIM_TOKENS)
        self.eod = tokenizer.eod

    def decide(self, phase: int, fkey: int, position: int, document: int, rate: float) -> bool:
        return rate > 0 and uniform(self.seed, 1, phase, fkey, position, document) < rate

    def apply(self, tokens: np.ndarray, parts: Sequence, rate: float, spm_rate: float, phase: int,
              fkey: int) -> tuple[np.ndarray, list[FimPiece]]:
        """FIM over the pieces of one sample (`parts`: SamplePart-like with document/position/offset/length)."""
        out = tokens
        report = []
        at = 0
        for p in parts:
            n = p.length
            if self.decide(phase, fkey, p.position, p.document, rate):
                if out is tokens:
                    out = tokens.copy()
                piece = self._transform(tokens[at:at + n], phase, fkey, p, spm_rate, at)
                if piece is not None:
                    new, info = piece
                    out[at:at + n] = new
                    report.append(info)
                else:
                    report.append(FimPiece(at, n, "none"))
            else:
                report.append(FimPiece(at, n, "none"))
            at += n
        return out, report

    def _transform(self, piece: np.ndarray, phase: int, fkey: int, p, spm_rate: float, at: int):
        n = len(piece)
        body_len = n - 1 if n and int(piece[-1]) == self.eod else n
        if body_len < 1:
            return None
        text = self.tok.decode(piece[:body_len].tolist())
        if not text:
            return None
        key = (self.seed, 2, phase, fkey, p.position, p.document, p.offset)
        a = int(uniform(*key, 0) * (len(text) + 1))
        b = int(uniform(*key, 1) * (len(text) + 1))
        lo, hi = (a, b) if a <= b else (b, a)
        pre, mid, suf = self.tok.encode_batch([text[:lo], text[lo:hi], text[hi:]])
        spm = uniform(*key, 2) < spm_rate
        if spm:
            layout = [self.prefix_id, self.suffix_id, *suf, self.middle_id, *pre, *mid]
        else:
            layout = [self.prefix_id, *pre, self.suffix_id, *suf, self.middle_id, *mid]
        truncated = max(0, len(layout) - body_len)
        padded = max(0, body_len - len(layout))
        new = np.empty(n, dtype=piece.dtype)
        new[:min(len(layout), body_len)] = layout[:body_len]
        if padded:
            new[len(layout):body_len] = self.pad_id
        if body_len < n:
            new[body_len:] = piece[body_len:]
        return new, FimPiece(at, n, "spm" if spm else "psm", lo, hi, truncated, padded)


def unpermute(tok, layout: Sequence[int], mode: str) -> str:
    """Text of a FIM piece put back in order (prefix + middle + suffix); for tests and inspection."""
    ids = [int(i) for i in layout]
    P, M, S = (tok.special[n] for n in ("fim_prefix", "fim_middle", "fim_suffix"))
    pad = tok.special["fim_pad"]
    ids = [i for i in ids if i != pad]
    if mode == "psm":
        i_s, i_m = ids.index(S), ids.index(M)
        pre, suf, mid = ids[1:i_s], ids[i_s + 1:i_m], ids[i_m + 1:]
        return tok.decode(pre) + tok.decode(mid) + tok.decode(suf)
    i_m = ids.index(M)
    suf, rest = ids[2:i_m], ids[i_m + 1:]
    return tok.decode(rest) + tok.decode(suf)


def fim_token_ids(tokenizer) -> Optional[dict]:
    return {n: tokenizer.special[n] for n in FIM_TOKENS} if all(n in tokenizer.special for n in FIM_TOKENS) else None
