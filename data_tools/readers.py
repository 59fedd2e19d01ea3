"""Streaming corpus readers: jsonl (.gz, .zst), parquet, plain text files and source trees.

Reading is split in two steps so preprocessing can spread the work over processes:
    iter_tasks(files, keys)   cheap, in order: byte chunks of jsonl cut at line ends, parquet row
                              groups, groups of text/code files. Memory is bounded by the chunk size.
    load_task(task, keys)     -> ({key: [text, ...]}, skipped Counter): parses, validates, counts
                              records of the wrong shape by reason (missing_key, not_string, ...);
                              damaged input (a cut or corrupt stream, a line that is not JSON)
                              raises streams.DamagedInput naming the file and the line/byte.
`iter_documents` chains both for plain iteration (tokenizer training, tests).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from .code_tree import MAX_FILE_BYTES, language_of, read_text_file
from .inputs import expand_inputs
from .streams import DamagedInput, open_stream

CHUNK_BYTES = 1 << 20  # jsonl bytes per task
FILES_PER_TASK = 64  # text/code files per task
MAX_LINE_BYTES = 512 << 20  # a longer "line" is skipped (never held whole in memory beyond this)


@dataclass
class Task:
    kind: str  # "lines" | "parquet" | "files"
    path: str  # the file (first file for "files")
    data: bytes = b""  # "lines": whole lines, each ending in \n (the last one may not)
    skipped: dict = field(default_factory=dict)  # counted while cutting (e.g. line_too_long)
    in_bytes: int = 0  # input bytes this task stands for (decompressed; the summary's MB/s)
    pos: int = 0  # on-disk bytes of all input read up to the end of this task (partitioning)
    line0: int = 0  # "lines": complete lines of the file before `data`
    byte0: int = 0  # "lines": decompressed offset of `data` in the file
    last: bool = False  # "lines": `data` is the file's tail (its last line may lack a newline)
    row_group: int = -1  # "parquet"
    files: list = field(default_factory=list)  # "files": paths
    fmt: str = ""  # "files": text | code


# --------------------------------------------------------------------------- cutting into tasks


def _line_tasks(path: str, fmt: str, chunk_bytes: int, base: int) -> Iterator[Task]:
    """Whole-line chunks of a (decompressed) jsonl stream. Every byte read is counted in some task's
    `in_bytes` (however long the lines); each task knows the line number and byte offset it starts at."""
    carry = b""
    carry_at = 0  # decompressed offset where `carry` starts
    lines = 0  # complete lines before `carry`
    pending = 0  # bytes read and not yet counted in a task
    dropping = False  # inside an over-long line: discard until its newline
    f, raw = open_stream(path, fmt)
    try:
        while True:
            try:
                block = f.read(chunk_bytes)
            except DamagedInput as e:
                raise e.after_lines(lines) from None
            if not block:
                break
            pending += len(block)
            if dropping:
                nl = block.find(b"\n")
                if nl < 0:
                    carry_at += len(block)
                    continue
                carry_at, lines = carry_at + nl + 1, lines + 1
                block, dropping = block[nl + 1 :], False
            cut = block.rfind(b"\n")
            if cut < 0:
                carry += block
                if len(carry) > MAX_LINE_BYTES:
                    carry_at += len(carry)
                    carry, dropping = b"", True
                    yield Task("lines", path, b"", {"line_too_long": 1}, pending, base + raw.tell(), lines, carry_at)
                    pending = 0
                continue
            data = carry + block[: cut + 1]
            carry = block[cut + 1 :]
            yield Task("lines", path, data, {}, pending, base + raw.tell(), lines, carry_at)
            pending = 0
            lines += data.count(b"\n")
            carry_at += len(data)
        end = base + raw.tell()
    finally:
        f.close()
        raw.close()
    if (carry and not dropping) or pending:
        yield Task("lines", path, b"" if dropping else carry, {}, pending, end, lines, carry_at, last=True)


def _open_parquet(path: str):
    """The file with its footer read; page CRCs are verified where the writer stored them."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as e:
        raise DamagedInput(path, "its footer", f"not a readable parquet file ({' '.join(str(e).split())})") from None


def _row_group_span(md, rg: int) -> str:
    try:
        cols = [md.row_group(rg).column(c) for c in range(md.num_columns)]
        start = min(c.dictionary_page_offset or c.data_page_offset for c in cols)
        end = max((c.dictionary_page_offset or c.data_page_offset) + c.total_compressed_size for c in cols)
        return f"row group {rg} (bytes {start}-{end})"
    except Exception:
        return f"row group {rg}"


def _parquet_tasks(path: str, base: int) -> Iterator[Task]:
    pf = _open_parquet(path)
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
    files: Sequence[tuple[str, str]],
    chunk_bytes: int = CHUNK_BYTES,
    files_per_task: int = FILES_PER_TASK,
    admit: Callable[[str, str], bool] | None = None,
) -> Iterator[Task]:
    """Tasks in input order for [(path, format)] from `expand_inputs`.

    `admit(path, fmt)`, when given, is asked before a jsonl/parquet file is cut; False leaves it out."""
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
        if admit is not None and not admit(path, fmt):
            base += size
            continue
        if fmt == "parquet":
            yield from _parquet_tasks(path, base)
        else:
            yield from _line_tasks(path, fmt, chunk_bytes, base)
        base += size
    t = flush()
    if t:
        yield t


# --------------------------------------------------------------------------- loading one task


def _bad_line(task: Task, i: int, what: str) -> DamagedInput:
    """Line `i` of the task's data is not a JSON line: where it is in the file, and whether the file looks cut."""
    parts = task.data.split(b"\n")
    at = task.byte0 + sum(len(x) + 1 for x in parts[:i])
    if task.last and i == len(parts) - 1 and parts[i]:
        what += "; it is the last line and has no newline: the file looks cut short"
    return DamagedInput(task.path, f"line {task.line0 + i + 1} (byte {at})", what)


def _json_lines(
    task: Task, keys: Sequence[str], out: dict, stats: Counter, meta: list | None, skip_bad_lines: bool
) -> None:
    data = task.data
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = []
        for raw in data.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                stats["not_utf8"] += 1
                lines.append(e)  # keeps line numbers aligned; raised or skipped in order below
    loads = json.loads
    single = keys[0] if len(keys) == 1 else None
    for i, line in enumerate(lines):
        if type(line) is not str:
            if not skip_bad_lines:
                raise _bad_line(task, i, f"not UTF-8 ({line.reason} at byte {line.start} of the line)")
            continue
        if not line or line.isspace():
            continue
        try:
            obj = loads(line)
        except ValueError as e:
            if not skip_bad_lines:
                raise _bad_line(task, i, f"invalid JSON ({e})") from None
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
    pf = _open_parquet(task.path)
    names = set(pf.schema_arrow.names)
    missing = [k for k in keys if k not in names]
    if missing:
        stats["missing_key"] += pf.metadata.row_group(task.row_group).num_rows
        return
    try:
        table = pf.read_row_group(task.row_group, columns=list(keys))
    except Exception as e:
        where = _row_group_span(pf.metadata, task.row_group)
        raise DamagedInput(task.path, where, f"cannot decode ({' '.join(str(e).split())})") from None
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
    task: Task,
    keys: Sequence[str] = ("text",),
    with_meta: bool = False,
    max_file_bytes: int = MAX_FILE_BYTES,
    skip_bad_lines: bool = False,
):
    """({key: [texts]}, Counter of skipped reasons[, per-document metadata]).

    A jsonl line that is not UTF-8 or not JSON raises `DamagedInput` (file, line, byte), or with
    `skip_bad_lines` is counted (`not_utf8`, `invalid_json`). Records of the wrong shape are always
    counted and skipped (`missing_key`, `not_object`, `not_string`, `empty`)."""
    out: dict[str, list[str]] = {k: [] for k in keys}
    stats: Counter = Counter(task.skipped)
    meta: list | None = [] if with_meta else None
    if task.kind == "lines":
        _json_lines(task, keys, out, stats, meta, skip_bad_lines)
    elif task.kind == "parquet":
        _parquet(task, keys, out, stats, meta)
    elif task.kind == "files":
        _files(task, keys, out, stats, meta, max_file_bytes)
    else:
        raise ValueError(f"unknown task kind {task.kind!r}")
    return (out, stats, meta) if with_meta else (out, stats)


# --------------------------------------------------------------------------- plain iteration


def verify_file(path: str, fmt: str, keys: Sequence[str] = ("text",), skip_bad_lines: bool = False) -> None:
    """Read one jsonl/parquet file to its verified end as preprocessing would; raises `DamagedInput`."""
    if fmt == "parquet":
        tasks = _parquet_tasks(path, 0)
    elif fmt.startswith("jsonl"):
        tasks = _line_tasks(path, fmt, CHUNK_BYTES, 0)
    else:
        return
    for task in tasks:
        load_task(task, keys, skip_bad_lines=skip_bad_lines)


def iter_documents(
    inputs,
    key: str = "text",
    fmt: str = "auto",
    stats: Counter | None = None,
    with_meta: bool = False,
    max_file_bytes: int = MAX_FILE_BYTES,
    skip_bad_lines: bool = False,
):
    """Yield each document's text (or (text, meta) with `with_meta`) from any corpus input, streaming.

    `stats`, when given, accumulates the skipped-line counts by reason. Damaged input raises
    `DamagedInput` (see load_task).
    """
    files = expand_inputs(inputs, fmt)
    for task in iter_tasks(files):
        if with_meta:
            out, st, meta = load_task(task, (key,), True, max_file_bytes, skip_bad_lines)
            yield from zip(out[key], meta, strict=True)
        else:
            out, st = load_task(task, (key,), False, max_file_bytes, skip_bad_lines)
            yield from out[key]
        if stats is not None:
            stats.update(st)
