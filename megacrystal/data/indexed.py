"""Megatron's indexed dataset: `PREFIX.bin` (token ids) + `PREFIX.idx` (lengths, pointers,
document index). Byte-compatible with megatron-core's `IndexedDataset` (see docs/formats.md).

Reader: memory-mapped, zero-copy slices, validated on open (every problem is an
`IndexedFileError` naming the file). Writer: streaming appends, index written at `finalize`.
This module imports numpy only (no torch), so preprocessing starts fast.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = 34  # magic 9 + version 8 + dtype 1 + N 8 + D 8

DTYPE_CODES: dict[int, type] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class IndexedFileError(ValueError):
    """A missing, truncated or corrupt `.bin`/`.idx`; the message names the file."""


def data_file(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.bin"


def index_file(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.idx"


def token_dtype(vocab_size: int) -> type:
    """Megatron's choice: uint16 when the vocabulary is under 65500, else int32."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


# --------------------------------------------------------------------------- reading


class IndexedDataset:
    """Read-only view of `PREFIX.bin/.idx`. `ds[i]` is sequence i as a zero-copy numpy view."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self.idx_path, self.bin_path = index_file(prefix), data_file(prefix)
        self._read_index()
        self._open_bin()

    def _fail(self, path: str, what: str):
        raise IndexedFileError(f"{path}: {what}")

    def _read_index(self) -> None:
        path = self.idx_path
        if not os.path.isfile(path):
            self._fail(path, "index file not found")
        size = os.path.getsize(path)
        if size < HEADER_SIZE:
            self._fail(path, f"truncated index: {size} bytes, a header needs {HEADER_SIZE}")
        with open(path, "rb") as f:
            header = f.read(HEADER_SIZE)
        if header[:9] != MAGIC:
            self._fail(path, f"bad magic {header[:9]!r}, expected {MAGIC!r} (not a Megatron MMIDIDX index)")
        (version,) = struct.unpack("<Q", header[9:17])
        if version != VERSION:
            self._fail(path, f"unsupported index version {version}, expected {VERSION}")
        code = header[17]
        if code not in DTYPE_CODES:
            self._fail(path, f"unknown dtype code {code}, expected one of {sorted(DTYPE_CODES)}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        n, d = struct.unpack("<QQ", header[18:34])
        expected = HEADER_SIZE + 4 * n + 8 * n + 8 * d
        if size != expected:
            self._fail(
                path,
                f"size {size} bytes does not match N={n} sequences and D={d} document "
                f"entries (expected {expected} bytes; truncated or corrupt)",
            )
        if d < 1:
            self._fail(path, "document index is empty (expected at least the leading 0)")
        mm = np.memmap(path, mode="r", dtype=np.uint8)
        self._idx_mm = mm
        self.sequence_lengths = np.frombuffer(mm, dtype=np.int32, count=n, offset=HEADER_SIZE)
        self.sequence_pointers = np.frombuffer(mm, dtype=np.int64, count=n, offset=HEADER_SIZE + 4 * n)
        self.document_indices = np.frombuffer(mm, dtype=np.int64, count=d, offset=HEADER_SIZE + 12 * n)
        di = self.document_indices
        if di[0] != 0 or di[-1] != n:
            self._fail(path, f"document index must start at 0 and end at N={n}; got {di[0]}..{di[-1]}")
        if d > 1 and np.any(np.diff(di) < 0):
            self._fail(path, "document index is not non-decreasing")
        if n:
            lengths = self.sequence_lengths
            if lengths.min() < 0:
                self._fail(path, "negative sequence length")
            ptr = self.sequence_pointers
            if ptr[0] != 0 or np.any(ptr[1:] != ptr[:-1] + lengths[:-1].astype(np.int64) * self.dtype.itemsize):
                self._fail(
                    path,
                    "sequence pointers do not agree with sequence lengths "
                    f"(each pointer must be the previous + length x {self.dtype.itemsize} bytes)",
                )
        self.num_tokens = int(self.sequence_lengths.sum(dtype=np.int64))

    def _open_bin(self) -> None:
        path = self.bin_path
        if not os.path.isfile(path):
            self._fail(path, "data file not found")
        size = os.path.getsize(path)
        expected = self.num_tokens * self.dtype.itemsize
        if size != expected:
            self._fail(
                path,
                f"size {size} bytes, but {self.idx_path} describes {self.num_tokens} tokens "
                f"of {self.dtype.name} = {expected} bytes",
            )
        # np.memmap refuses empty files
        self._bin = np.memmap(path, mode="r", dtype=self.dtype) if size else np.empty(0, dtype=self.dtype)

    # --- access
    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.prefix}: sequence {i} out of range ({n} sequences)")
        i %= n
        start = self.sequence_pointers[i] // self.dtype.itemsize
        return self._bin[start : start + self.sequence_lengths[i]]

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset+length) of sequence i (zero-copy)."""
        seq = self[i]
        end = len(seq) if length is None else offset + length
        return seq[offset:end]

    def document(self, k: int) -> np.ndarray:
        """All tokens of document k (its sequences concatenated; a view when it has one sequence)."""
        a, b = self.document_indices[k], self.document_indices[k + 1]
        if b - a == 1:
            return self[int(a)]
        return np.concatenate([self[int(j)] for j in range(a, b)]) if b > a else np.empty(0, self.dtype)

    @property
    def tokens(self) -> np.ndarray:
        """The whole `.bin` as one flat memory-mapped array."""
        return self._bin

    def __repr__(self) -> str:
        return f"IndexedDataset({self.prefix!r}, sequences={len(self)}, tokens={self.num_tokens}, dtype={self.dtype})"


# --------------------------------------------------------------------------- writing


class IndexedDatasetWriter:
    """Streams sequences into `PREFIX.bin`; `finalize()` writes `PREFIX.idx`.

    Files are written as `*.tmp` and renamed at finalize, so an interrupted run never leaves a
    half-written pair that looks complete, and never clobbers a finished pair before it is replaced.
    """

    def __init__(self, prefix: str | os.PathLike, dtype=np.uint16, buffer_bytes: int = 8 << 20):
        self.prefix = os.fspath(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF:
            raise ValueError(f"{self.prefix}: unsupported dtype {self.dtype}")
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = data_file(prefix) + ".tmp"
        self._bin = open(self._bin_tmp, "wb", buffering=buffer_bytes)
        self._lengths: list[np.ndarray] = []
        self._doc_ends: list[np.ndarray] = []  # cumulative sequence counts at document ends
        self._n = 0
        self._closed = False
        self._published = False

    def add_document(self, tokens: np.ndarray | Sequence[int], lengths: Sequence[int] | None = None) -> None:
        """One document; `lengths` splits it into several sequences (sentence splitting), default one."""
        arr = np.asarray(tokens, dtype=self.dtype)
        lens = np.array([len(arr)] if lengths is None else lengths, dtype=np.int32)
        if lens.sum() != len(arr):
            raise ValueError(f"{self.prefix}: sequence lengths sum to {lens.sum()}, document has {len(arr)} tokens")
        self._bin.write(arr.tobytes())
        self._lengths.append(lens)
        self._n += len(lens)
        self._doc_ends.append(np.array([self._n], dtype=np.int64))

    def add_documents(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Many one-sequence documents at once: `flat` holds them back to back, `lengths` their sizes."""
        flat = np.asarray(flat)
        if flat.dtype != self.dtype:
            flat = flat.astype(self.dtype)
        lengths = np.asarray(lengths, dtype=np.int32)
        if int(lengths.sum(dtype=np.int64)) != len(flat):
            raise ValueError(f"{self.prefix}: lengths sum to {int(lengths.sum())}, got {len(flat)} tokens")
        self._bin.write(memoryview(np.ascontiguousarray(flat)).cast("B"))
        self._lengths.append(lengths)
        self._doc_ends.append(self._n + np.arange(1, len(lengths) + 1, dtype=np.int64))
        self._n += len(lengths)

    def add_raw(self, bin_bytes: bytes, lengths: np.ndarray, doc_ends_relative: np.ndarray) -> None:
        """Append a prepared chunk: bytes of the `.bin`, sequence lengths, document ends (relative)."""
        self._bin.write(bin_bytes)
        self._lengths.append(np.asarray(lengths, dtype=np.int32))
        self._doc_ends.append(self._n + np.asarray(doc_ends_relative, dtype=np.int64))
        self._n += len(lengths)

    def finalize(self, publish: bool = True) -> None:
        """Complete both files as `*.tmp` (fsynced); `publish` renames them into place (else call publish())."""
        if not self._closed:
            self._bin.flush()
            os.fsync(self._bin.fileno())
            self._bin.close()
            lengths = np.concatenate(self._lengths) if self._lengths else np.empty(0, np.int32)
            doc_index = np.concatenate([np.zeros(1, np.int64)] + self._doc_ends)
            write_index(index_file(self.prefix) + ".tmp", self.dtype, lengths, doc_index)
            with open(index_file(self.prefix) + ".tmp", "rb+") as f:
                os.fsync(f.fileno())
            self._closed = True
        if publish:
            self.publish()

    def publish(self) -> None:
        if not self._published:
            os.replace(self._bin_tmp, data_file(self.prefix))
            os.replace(index_file(self.prefix) + ".tmp", index_file(self.prefix))
            self._published = True

    def abort(self) -> None:
        """Drop what was written (temporary files only; published outputs are untouched)."""
        if not self._published:
            if not self._bin.closed:
                self._bin.close()
            for p in (self._bin_tmp, index_file(self.prefix) + ".tmp"):
                if os.path.exists(p):
                    os.remove(p)
            self._closed = self._published = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


def write_index(path: str, dtype, lengths: np.ndarray, document_indices: np.ndarray) -> None:
    """Write an `.idx` file for `lengths` (int32) and `document_indices` (int64, leading 0)."""
    dtype = np.dtype(dtype)
    lengths = np.asarray(lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    doc = np.asarray(document_indices, dtype=np.int64)
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", VERSION))
        f.write(struct.pack("<B", CODE_OF[dtype]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(doc)))
        f.write(lengths.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(doc.tobytes(order="C"))


def write_documents(prefix: str | os.PathLike, documents: Iterable[Sequence[int]], dtype=np.uint16) -> None:
    """Convenience: write an iterable of token lists as one-sequence documents."""
    with IndexedDatasetWriter(prefix, dtype=dtype) as w:
        for doc in documents:
            w.add_document(doc)


def merge(
    prefixes: Sequence[str | os.PathLike], out_prefix: str | os.PathLike, chunk_bytes: int = 64 << 20
) -> IndexedDataset:
    """Concatenate indexed files (same dtype) into `out_prefix`, streaming the `.bin` bytes."""
    if not prefixes:
        raise ValueError("merge: no input prefixes")
    parts = [IndexedDataset(p) for p in prefixes]
    dtype = parts[0].dtype
    for p in parts[1:]:
        if p.dtype != dtype:
            raise IndexedFileError(f"{p.idx_path}: dtype {p.dtype} differs from {parts[0].idx_path}'s {dtype}")
    w = IndexedDatasetWriter(out_prefix, dtype=dtype)
    try:
        for p in parts:
            with open(p.bin_path, "rb") as f:
                while True:
                    chunk = f.read(chunk_bytes)
                    if not chunk:
                        break
                    w._bin.write(chunk)
            w._lengths.append(np.array(p.sequence_lengths))
            w._doc_ends.append(w._n + np.array(p.document_indices[1:]))
            w._n += len(p)
        w.finalize()
    except BaseException:
        w.abort()
        raise
    return IndexedDataset(out_prefix)
