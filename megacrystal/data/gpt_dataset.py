"""GPT document, sample and shuffle indices over one indexed file, as megatron-core 0.16.1 builds them.

For the same documents (sequence ids of the split), sequence length, sample count and seed the
three arrays equal megatron-core's `GPTDataset` arrays bit for bit:

1. epochs E: the smallest E with E*T >= samples*S + 1 (T: tokens of the split);
2. document index: the documents repeated E times as int32, shuffled by RandomState(seed); when
   E > 1 and the last epoch would give fewer than int(0.8 * samples per epoch) samples, the
   first E-1 epochs and the last one are shuffled separately (the same RandomState, in turn);
3. sample index [rows, 2] (int32 unless an entry could exceed int32): where each sample of S+1
   tokens starts, one token of overlap between consecutive samples; rows cover all E epochs;
4. shuffle index: a permutation of the samples (uint32, or int64 when huge), shuffled by the
   same RandomState after the document index; separated the same way as the epochs.

The shuffles use the native reproduction of numpy's legacy `RandomState.shuffle` (same MT19937
draws, same swaps, faster) and the native sample-index walk; numpy does both when the native
module is missing. A "document" here is one sequence of the indexed file, as in megatron-core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..compiled import native
from . import index_cache
from .indexed import IndexedDataset

SEPARATE_FINAL_EPOCH_THRESHOLD = 0.80
INDEX_VERSION = 1


# --------------------------------------------------------------------------- the three arrays


def num_epochs(tokens_per_epoch: int, num_samples: int | None, seq_length: int, extra: int = 1) -> int:
    if num_samples is None:
        return 1
    if tokens_per_epoch <= 0:
        raise ValueError("num_epochs: the split has no tokens")
    needed = num_samples * seq_length + extra
    return max(1, -(-needed // tokens_per_epoch))


def samples_in(
    epochs: int, tokens_per_epoch: int, seq_length: int, extra: int = 1, drop_last_partial: bool = True
) -> int:
    total = epochs * tokens_per_epoch - extra
    return total // seq_length if drop_last_partial else math.ceil(np.float32(total) / np.float32(seq_length))


def separate_final_epoch(tokens_per_epoch: int, num_samples: int | None, seq_length: int, extra: int = 1) -> bool:
    epochs = num_epochs(tokens_per_epoch, num_samples, seq_length, extra)
    if epochs == 1:
        return False
    before_final = samples_in(epochs - 1, tokens_per_epoch, seq_length, extra)
    from_final = num_samples - before_final
    per_epoch = samples_in(1, tokens_per_epoch, seq_length, extra)
    return from_final < int(SEPARATE_FINAL_EPOCH_THRESHOLD * per_epoch)


def shuffle_(x: np.ndarray, rs: np.random.RandomState) -> None:
    """`rs.shuffle(x)` for a contiguous 1-D array, natively when possible (same result, same rs state after)."""
    mod = native.get()
    if mod is None or x.ndim != 1 or not x.flags.c_contiguous or x.dtype.itemsize not in (1, 2, 4, 8):
        rs.shuffle(x)
        return
    name, key, pos, has_gauss, gauss = rs.get_state()
    key = np.array(key, dtype=np.uint32)
    pos = mod.legacy_shuffle(x, key, int(pos))
    rs.set_state((name, key, pos, has_gauss, gauss))


def build_document_index(
    documents: np.ndarray, epochs: int, rs: np.random.RandomState, separate_final: bool
) -> np.ndarray:
    docs = np.asarray(documents, dtype=np.int32)
    if separate_final and epochs > 1:
        first = build_document_index(docs, epochs - 1, rs, False)
        last = build_document_index(docs, 1, rs, False)
        return np.concatenate((first, last))
    out = np.tile(docs, epochs)
    shuffle_(out, rs)
    return out


def build_sample_index(
    sizes: np.ndarray,
    document_index: np.ndarray,
    seq_length: int,
    epochs: int,
    tokens_per_epoch: int,
    drop_last_partial: bool = True,
    extra: int = 1,
) -> np.ndarray:
    sizes = np.ascontiguousarray(sizes, dtype=np.int32)
    document_index = np.ascontiguousarray(document_index, dtype=np.int32)
    wide = max(len(document_index), int(sizes.max()) if len(sizes) else 0) > np.iinfo(np.int32).max
    mod = native.get()
    if mod is not None:
        return mod.build_sample_index(
            sizes,
            document_index,
            int(seq_length),
            int(epochs),
            int(tokens_per_epoch),
            bool(drop_last_partial),
            int(extra),
            wide,
        )
    return _sample_index_numpy(
        sizes,
        document_index,
        seq_length,
        epochs,
        tokens_per_epoch,
        drop_last_partial,
        extra,
        np.int64 if wide else np.int32,
    )


def _sample_index_numpy(sizes, document_index, seq_length, epochs, tokens_per_epoch, drop_last_partial, extra, dtype):
    """The walk, vectorised: sample r starts at flat token position r*S, in the document holding it.
    (The other options, never used here, take the plain walk.)"""
    n = samples_in(epochs, tokens_per_epoch, seq_length, extra, drop_last_partial)
    if extra != 1 or not drop_last_partial:
        return _sample_index_walk(sizes, document_index, seq_length, n, extra, dtype)
    lengths = sizes[document_index].astype(np.int64)
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    end = int(starts[-1])
    pos = np.minimum(np.arange(n + 1, dtype=np.int64) * seq_length, end - extra)
    # With the overlap token a sample starts inside a document; without it a start that falls on
    # a boundary is written as the end of the previous document (offset == its length).
    d = np.searchsorted(starts, pos, side="right" if extra else "left") - 1
    d = np.clip(d, 0, len(lengths) - 1)
    out = np.empty((n + 1, 2), dtype=dtype)
    out[:, 0] = d
    out[:, 1] = pos - starts[d]
    out[0] = 0
    return out


def _sample_index_walk(sizes, document_index, seq_length, n, extra, dtype):
    out = np.zeros((n + 1, 2), dtype=dtype)
    d, offset, last = 0, 0, len(document_index) - 1
    for row in range(1, n + 1):
        remaining = seq_length + extra
        while remaining != 0:
            length = int(sizes[document_index[d]]) - offset
            remaining -= length
            if remaining <= 0:
                offset += remaining + length - extra
                remaining = 0
            elif d == last:
                offset = int(sizes[document_index[d]]) - extra
                break
            else:
                d, offset = d + 1, 0
        out[row] = (d, offset)
    return out


def build_shuffle_index(num_samples: int, total_size: int, rs: np.random.RandomState) -> np.ndarray:
    dtype = np.uint32 if total_size < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(num_samples, dtype=dtype)
    shuffle_(first, rs)
    if num_samples == total_size:
        return first
    last = np.arange(num_samples, total_size, dtype=dtype)
    shuffle_(last, rs)
    return np.concatenate((first, last))


def build_indices(
    sizes: np.ndarray,
    documents: np.ndarray,
    seq_length: int,
    num_samples: int | None,
    seed: int,
    drop_last_partial: bool = True,
    extra: int = 1,
):
    """(document_index, sample_index, shuffle_index) for `documents` (sequence ids) of `sizes`."""
    documents = np.asarray(documents)
    tokens = int(np.sum(sizes[documents], dtype=np.int64))
    epochs = num_epochs(tokens, num_samples, seq_length, extra)
    separate = separate_final_epoch(tokens, num_samples, seq_length, extra)
    rs = np.random.RandomState(seed)
    doc_idx = build_document_index(documents, epochs, rs, separate)
    sample_idx = build_sample_index(sizes, doc_idx, seq_length, epochs, tokens, drop_last_partial, extra)
    rows = sample_idx.shape[0] - 1
    first = samples_in(epochs - 1, tokens, seq_length, extra) if separate else rows
    shuffle_idx = build_shuffle_index(first, rows, rs)
    return doc_idx, sample_idx, shuffle_idx


# --------------------------------------------------------------------------- one file's split, cached


@dataclass
class SamplePart:
    """A piece of one document inside a sample."""

    document: int  # sequence id in the indexed file
    position: int  # position in the document index: identifies this occurrence (epoch copy)
    epoch: int  # position // documents per epoch
    offset: int  # first token of the piece within the document
    length: int  # tokens of the piece


class GPTIndex:
    """Samples of `seq_length + 1` tokens drawn from `documents` of one indexed file.

    `len(self)` is the number of samples the index holds (all epochs' samples, >= num_samples);
    `sample(k)` -> (int64 tokens, [SamplePart]) for shuffled sample k.
    """

    def __init__(
        self,
        dataset: IndexedDataset,
        documents: np.ndarray,
        seq_length: int,
        num_samples: int | None,
        seed: int,
        cache_dir: str | None = None,
        group=None,
        name: str | None = None,
    ):
        self.dataset = dataset
        self.documents = np.asarray(documents, dtype=np.int32)
        self.seq_length = int(seq_length)
        self.num_samples_requested = num_samples
        self.seed = int(seed)
        self.name = name or dataset.prefix
        sizes = dataset.sequence_lengths
        self.tokens_per_epoch = int(np.sum(sizes[self.documents], dtype=np.int64))
        if self.tokens_per_epoch < 2:
            raise ValueError(
                f"{dataset.prefix}: the split has {self.tokens_per_epoch} tokens; a sample needs at least 2"
            )
        self.epochs = num_epochs(self.tokens_per_epoch, num_samples, self.seq_length)
        self.description = {
            "version": INDEX_VERSION,
            "sequence_lengths": index_cache.array_fingerprint(sizes),
            "documents": index_cache.array_fingerprint(self.documents),
            "num_documents": len(self.documents),
            "seq_length": self.seq_length,
            "num_samples": num_samples,
            "seed": self.seed,
            "drop_last_partial": True,
            "extra": 1,
        }

        def build():
            d, s, sh = build_indices(sizes, self.documents, self.seq_length, num_samples, self.seed)
            return {"document_index": d, "sample_index": s, "shuffle_index": sh}, {"epochs": self.epochs}

        arrays, _ = index_cache.cached("gpt", self.description, build, cache_dir, group)
        self.document_index = arrays["document_index"]
        self.sample_index = arrays["sample_index"]
        self.shuffle_index = arrays["shuffle_index"]

    def __len__(self) -> int:
        return self.sample_index.shape[0] - 1

    def parts(self, k: int) -> list[SamplePart]:
        """The document pieces of shuffled sample k, in order."""
        if not 0 <= k < len(self):
            raise IndexError(f"{self.name}: sample {k} out of range ({len(self)} samples)")
        i = int(self.shuffle_index[k])
        d0, o0 = (int(v) for v in self.sample_index[i])
        d1, o1 = (int(v) for v in self.sample_index[i + 1])
        n_docs = len(self.documents)
        sizes = self.dataset.sequence_lengths
        out = []
        for d in range(d0, d1 + 1):
            doc = int(self.document_index[d])
            start = o0 if d == d0 else 0
            stop = o1 + 1 if d == d1 else int(sizes[doc])
            out.append(SamplePart(doc, d, d // n_docs, start, stop - start))
        return out

    def sample(self, k: int) -> tuple[np.ndarray, list[SamplePart]]:
        parts = self.parts(k)
        ds = self.dataset
        tokens = np.concatenate([ds.get(p.document, p.offset, p.length) for p in parts]).astype(np.int64)
        return tokens, parts
