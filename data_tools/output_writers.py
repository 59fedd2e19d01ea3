"""The output files of one preprocessing run: one IndexedDatasetWriter per (partition, key).

Partitions are contiguous and closed in order as `*.tmp`; `finish()` publishes them all (renames) only
when the whole input was read, then merges partitions into the final files; `abort()` removes every
`*.tmp`. `tmp_names()` lists every temporary name a run may write (for output_lock.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from megacrystal.data.indexed import IndexedDatasetWriter, merge


def output_prefix_for(prefix: str, key: str) -> str:
    return f"{prefix}_{key}_document"


class OutputWriters:
    """One IndexedDatasetWriter per (partition, key); partitions are contiguous and finalized in order."""

    def __init__(self, prefix: str, keys: Sequence[str], dtype, partitions: int):
        self.prefix, self.keys, self.dtype, self.partitions = prefix, list(keys), dtype, partitions
        self.current = -1
        self.open: dict = {}
        self.done: list = []  # closed writers, published by finish()

    def _name(self, part: int, key: str) -> str:
        if self.partitions == 1:
            return output_prefix_for(self.prefix, key)
        return output_prefix_for(f"{self.prefix}_{part}", key)

    def tmp_names(self) -> list[str]:
        parts = [self._name(p, k) for p in range(self.partitions) for k in self.keys]
        if self.partitions > 1:
            parts += [output_prefix_for(self.prefix, k) for k in self.keys]
        return [f"{p}{ext}.tmp" for p in parts for ext in (".bin", ".idx")] + [f"{self.prefix}_summary.json.tmp"]

    def to_partition(self, part: int) -> None:
        while self.current < part:
            self._finalize_current()
            self.current += 1
            self.open = {k: IndexedDatasetWriter(self._name(self.current, k), dtype=self.dtype) for k in self.keys}

    def _finalize_current(self) -> None:
        for w in self.open.values():
            w.finalize(publish=False)  # published together once all input was read
        self.done += list(self.open.values())
        self.open = {}

    def write(self, arrays: dict) -> None:
        for k, (flat, lengths) in arrays.items():
            self.open[k].add_documents(flat, lengths)

    def finish(self) -> None:
        self.to_partition(self.partitions - 1)
        self._finalize_current()
        for w in self.done:
            w.publish()
        if self.partitions > 1:
            for k in self.keys:
                merge([self._name(p, k) for p in range(self.partitions)], output_prefix_for(self.prefix, k))

    def abort(self) -> None:
        for w in [*self.done, *self.open.values()]:
            w.abort()
        self.open, self.done = {}, []
