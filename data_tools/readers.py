"""Streaming corpus readers: jsonl (.gz, .zst), parquet, plain text files and source trees.

Reading is split in two steps so preprocessing can spread the work over processes:
    iter_tasks(files, keys)   cheap, in order: byte chunks of jsonl cut at line ends, parquet row
                              groups, groups of text/code files. Memory is bounded by the chunk size.
    load_task(task, keys)     -> ({key: [text, ...]}, skipped Counter): parses, validates, counts
                              bad lines by reason (invalid_json, missing_key, not_utf8, ...).
`iter_documents` chains both for plain iteration (tokenizer training, tests).
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .code_tree import MAX_FILE_BYTES, language_of, read_text_file
from .inputs import expand_inputs

CHUNK_BYTES = 1 << 20  # jsonl bytes per task
FILES_PER_TASK = 64  # text/code files per task
MAX_LINE_BYTES = 512 << 20  # a longer "line" is skipped (never held whole in memory beyond this)


@dataclass
class Task:
    kind: str  # "lines" | "parquet" | "files"
    path: str  # the file (first file for "files")
    data: bytes = b""  # "lines": whole lines, each ending in \n (the last one may not)
    row_group: int = -1  # "parquet"
    files: list = field(default_factory=list)  # "files": paths
    fmt: str = ""  # "files": text | code
    skipped: dict = field(default_factory=dict)  # counted while cutting (e.g. line_too_long)
    in_bytes: int = 0  # input bytes this task stands for (progress)
    pos: int = 0  # on-disk bytes of all input read up to the end of this task (partitioning)


# --------------------------------------------------------------------------- cutting into tasks


def _open_stream(path: str, fmt: str):
    """(decompressed stream, the raw file under it)."""
    raw = open(path, "rb", buffering=0)
    if fmt == "jsonl.gz":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if fmt == "jsonl.zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False), raw
    return raw, raw


def _line_tasks(path: str, fmt: str, chunk_bytes: int, base: int) -> Iterator[Task]:
    carry = b""
    dropping = False  # inside an over-long line: discard until its newline
    f, raw = _open_stream(path, fmt)
    with raw, f:
        while True:
            try:
                block = f.read(chunk_bytes)
            except (OSError, EOFError, ValueError) as e:  # corrupt/truncated compressed stream
                raise ValueError(f"{path}: cannot decompress ({e})") from None
            if not block:
                break
            skipped = {}
            if dropping:
                nl = block.find(b"\n")
                if nl < 0:
                    continue
                block, dropping = block[nl + 1 :], False
            cut = block.rfind(b"\n")
            if cut < 0:
                carry += block
                if len(carry) > MAX_LINE_BYTES:
                    carry, dropping = b"", True
                    skipped = {"line_too_long": 1}
                    yield Task("lines", path, b"", skipped=skipped, in_bytes=len(block), pos=base + raw.tell())
                continue
            data = carry + block[: cut + 1]
            carry = block[cut + 1 :]
            yield Task("lines", path, data, skipped=skipped, in_bytes=len(block), pos=base + raw.tell())
        end = base + raw.tell()
    if carry and not dropping:
        yield Task("lines", path, carry, in_bytes=0, pos=end)


def _parquet_tasks(path: str, base: int) -> Iterator[Task]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    md = pf.metadata
    size = os.path.getsize(path)
    for rg in range(md.num_row_groups):
        yield Task(
            "parquet",
            path,
            row_group=rg,
            in_bytes=md.row_group(rg).total_byte_size,
            pos=base + size * (rg + 1) // md.num_row_groups,
        )


def iter_tasks(
    files: Sequence[tuple[str, str]], chunk_bytes: int = CHUNK_BYTES, files_per_task: int = FILES_PER_TASK
) -> Iterator[Task]:
    """Tasks in input order for [(path, format)] from `expand_inputs`."""
    group: list[str] = []
    group_fmt = ""
    group_bytes = 0
    base = 0

    def flush():
        nonlocal group, group_bytes
        if group:
            t = Task("files", group[0], files=group, fmt=group_fmt, in_bytes=group_bytes, pos=base)
            group, group_bytes = [], 0
            return t
        return None

    for path, fmt in files:
        size = os.path.getsize(path)
        if fmt in ("text", "code"):
            if group and (fmt != group_fmt or len(group) >= files_per_task):
                yield flush()
            group_fmt = fmt
            group.append(path)
            group_bytes += size
            base += size
            continue
        t = flush()
        if t:
            yield t
        if fmt == "parquet":
            yield from _parquet_tasks(path, base)
        else:
            yield from _line_tasks(path, fmt, chunk_bytes, base)
        base += size
    t = flush()
    if t:
        yield t


# --------------------------------------------------------------------------- loading one task


def _json_lines(task: Task, keys: Sequence[str], out: dict, stats: Counter, meta: list | None) -> None:
    data = task.data
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = []
        for raw in data.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                stats["not_utf8"] += 1
    loads = json.loads
    single = keys[0] if len(keys) == 1 else None
    for line in lines:
        if not line or line.isspace():
            continue
        try:
            obj = loads(line)
        except ValueError:
            stats["invalid_json"] += 1
            continue
        if type(obj) is not dict:
            stats["not_object"] += 1
            continue
        if single is not None:
            v = obj.get(single)
            if type(v) is str and v:
                out[single].append(v)
                if meta is not None:
                    meta.append(obj)
                continue
            values = [v]
        else:
            values = [obj.get(k) for k in keys]
        _take(keys, values, out, stats, meta, obj)


def _take(keys, values, out: dict, stats: Counter, meta: list | None, meta_obj) -> None:
    """Append one record's values (and its metadata), or count why it is skipped."""
    reason = _bad_values(values)
    if reason:
        stats[reason] += 1
        return
    for k, v in zip(keys, values, strict=True):
        out[k].append(v)
    if meta is not None:
        meta.append(meta_obj)


def _bad_values(values) -> str:
    for v in values:
        if v is None:
            return "missing_key"
        if type(v) is not str:
            return "not_string"
    if all(not v for v in values):
        return "empty"
    return ""


def _parquet(task: Task, keys: Sequence[str], out: dict, stats: Counter, meta: list | None) -> None:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(task.path)
    names = set(pf.schema_arrow.names)
    missing = [k for k in keys if k not in names]
    if missing:
        stats["missing_key"] += pf.metadata.row_group(task.row_group).num_rows
        return
    table = pf.read_row_group(task.row_group, columns=list(keys))
    cols = []
    for k in keys:
        col = table.column(k)
        if not (col.type.equals("string") or col.type.equals("large_string")):
            stats["not_string"] += table.num_rows
            return
        cols.append(col.to_pylist())
    where = {"path": task.path, "row_group": task.row_group}
    for values in zip(*cols, strict=True):
        _take(keys, values, out, stats, meta, where)


def _files(task: Task, keys: Sequence[str], out: dict, stats: Counter, meta: list | None, max_file_bytes: int) -> None:
    if len(keys) != 1:
        raise ValueError(f"{task.path}: text/code files hold one field; got --json-keys {' '.join(keys)}")
    for p in task.files:
        text = read_text_file(p, stats, max_file_bytes, require_language=task.fmt == "code")
        if text is None:
            continue
        out[keys[0]].append(text)
        if meta is not None:
            meta.append({"path": p, "language": language_of(p) if task.fmt == "code" else "text"})


def load_task(
    task: Task, keys: Sequence[str] = ("text",), with_meta: bool = False, max_file_bytes: int = MAX_FILE_BYTES
):
    """({key: [texts]}, Counter of skipped reasons[, per-document metadata])."""
    out: dict[str, list[str]] = {k: [] for k in keys}
    stats: Counter = Counter(task.skipped)
    meta: list | None = [] if with_meta else None
    if task.kind == "lines":
        _json_lines(task, keys, out, stats, meta)
    elif task.kind == "parquet":
        _parquet(task, keys, out, stats, meta)
    elif task.kind == "files":
        _files(task, keys, out, stats, meta, max_file_bytes)
    else:
        raise ValueError(f"unknown task kind {task.kind!r}")
    return (out, stats, meta) if with_meta else (out, stats)


# --------------------------------------------------------------------------- plain iteration


def iter_documents(
    inputs,
    key: str = "text",
    fmt: str = "auto",
    stats: Counter | None = None,
    with_meta: bool = False,
    max_file_bytes: int = MAX_FILE_BYTES,
):
    """Yield each document's text (or (text, meta) with `with_meta`) from any corpus input, streaming.

    `stats`, when given, accumulates the skipped-line counts by reason.
    """
    files = expand_inputs(inputs, fmt)
    for task in iter_tasks(files):
        if with_meta:
            out, st, meta = load_task(task, (key,), True, max_file_bytes)
            yield from zip(out[key], meta, strict=True)
        else:
            out, st = load_task(task, (key,), False, max_file_bytes)
            yield from out[key]
        if stats is not None:
            stats.update(st)
