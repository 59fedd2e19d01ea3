"""The preprocessing hot path, run inside each worker: one task -> packed token arrays per key.

A worker loads the tokenizer once, then per task: parse (readers.load_task), batch-encode every
text of each key in one call (HF `encode_batch_fast`/`encode_batch`, SentencePiece batch encode),
and pack the id lists into one flat array + lengths in C++ (`_native.pack_ids`, numpy fallback).
Each worker is one process with one tokenizer thread, so `--workers N` uses N cores.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from .readers import Task, load_task
from .streams import DamagedInput
from .workers import die_with_parent, worker_signals


@dataclass
class EncodedTask:
    arrays: dict  # key -> (flat tokens, int32 lengths)
    skipped: Counter = field(default_factory=Counter)
    docs: int = 0
    tokens: int = 0
    in_bytes: int = 0
    pos: int = 0


class Encoder:
    def __init__(
        self,
        kind: str | None,
        model: str,
        keys: Sequence[str],
        append_eod: bool,
        max_file_bytes: int,
        allow_special_in_text: bool = False,
        skip_bad_lines: bool = False,
    ):
        from megacrystal.data.indexed import token_dtype
        from megacrystal.tokenizer import load_tokenizer

        # special-token parsing off unless asked: the HF backend's encode_special_tokens is set by load_tokenizer
        self.tok = load_tokenizer(kind, model, allow_special_in_text)
        self.skip_bad_lines = skip_bad_lines
        self.keys = tuple(keys)
        self.eod = self.tok.eod if append_eod else -1
        self.dtype = np.dtype(token_dtype(self.tok.vocab_size))
        self.max_file_bytes = max_file_bytes
        self._hf = getattr(self.tok, "backend", None)
        self._fast = getattr(self._hf, "encode_batch_fast", None)
        from megacrystal.compiled import native

        self._native = native.get()

    # --- tokenizing
    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._hf is not None:
            if self._fast is not None:
                return [e.ids for e in self._fast(texts, add_special_tokens=False)]
            return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]
        return self.tok.encode_batch(texts, num_threads=1)

    def _encode_checked(self, texts: list[str]) -> tuple[list, set]:
        """Ids for every text; texts the tokenizer rejects (e.g. lone surrogates) are reported by index."""
        try:
            return self._encode_batch(texts), set()
        except Exception:
            ids, bad = [], set()
            for i, t in enumerate(texts):
                try:
                    ids.append(self._encode_batch([t])[0])
                except Exception:
                    ids.append([])
                    bad.add(i)
            return ids, bad

    def _pack(self, docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        if self._native is not None and self.dtype.itemsize in (2, 4):
            return self._native.pack_ids(docs, self.dtype.itemsize, self.eod)
        extra = 1 if self.eod >= 0 else 0
        lengths = np.fromiter((len(d) + extra for d in docs), dtype=np.int32, count=len(docs))
        if extra:
            docs = [d + [self.eod] for d in docs]
        flat = np.fromiter(chain.from_iterable(docs), dtype=np.int64, count=int(lengths.sum()))
        if len(flat) and (flat.min() < 0 or flat.max() > np.iinfo(self.dtype).max):
            raise OverflowError(f"token id out of range for {self.dtype}")
        return flat.astype(self.dtype), lengths

    # --- one task
    def __call__(self, task: Task) -> EncodedTask:
        try:
            texts, skipped = load_task(
                task, self.keys, max_file_bytes=self.max_file_bytes, skip_bad_lines=self.skip_bad_lines
            )
        except DamagedInput:
            raise
        except Exception as e:
            where = f" row group {task.row_group}" if task.kind == "parquet" else ""
            msg = " ".join(str(e).split())
            raise ValueError(msg if msg.startswith(task.path) else f"{task.path}{where}: {msg}") from None
        ids = {}
        bad: set = set()
        for k in self.keys:
            ids[k], b = self._encode_checked(texts[k])
            bad |= b
        n = len(texts[self.keys[0]])
        drop = set(bad)
        if self.eod < 0:  # a document with no tokens and no EOD would be an empty sequence
            for k in self.keys:
                drop |= {i for i, d in enumerate(ids[k]) if not d}
        if bad:
            skipped["encode_error"] += len(bad)
        if len(drop) > len(bad):
            skipped["no_tokens"] += len(drop) - len(bad)
        keep = [i for i in range(n) if i not in drop] if drop else None
        out = EncodedTask({}, skipped, docs=n - len(drop), in_bytes=task.in_bytes, pos=task.pos)
        for k in self.keys:
            docs = ids[k] if keep is None else [ids[k][i] for i in keep]
            flat, lengths = self._pack(docs)
            out.arrays[k] = (flat, lengths)
            out.tokens += len(flat)
        return out


_worker: Encoder | None = None


def set_parent_encoder(encoder: Encoder | None) -> None:
    """Forked workers inherit this encoder (no per-worker tokenizer load); spawned ones build their own."""
    global _worker
    _worker = encoder


def init_worker(parent_pid: int, *args) -> None:
    """Pool initializer: die with the parent; one tokenizer thread per worker process (the pool supplies
    the parallelism)."""
    global _worker
    die_with_parent(parent_pid)
    worker_signals()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    if _worker is None:
        _worker = Encoder(*args)


def run_task(task: Task) -> EncodedTask:
    return _worker(task)
