"""Resolve `--input` (a file, a glob, a directory of shards, or a source tree) into typed files.

Formats, by file name:
    jsonl       *.jsonl *.json *.ndjson            one JSON object per line
    jsonl.gz    the same + .gz                      gzip stream (also already-sharded *.gz)
    jsonl.zst   the same + .zst / .zstd             zstandard stream (SlimPajama)
    parquet     *.parquet                           read by row group (StarCoderData)
    text        *.txt *.md *.rst                    one document per file
    code        any file inside a source tree       one document per file, language from the extension

A directory holding any corpus shards (jsonl/parquet/txt) is read as shards (plain *.json there is
taken for metadata such as summary.json: name or glob such a file to read it); a directory holding
none is an error unless `fmt="code"` asks for a source tree (one document per file).
`fmt="code"` or `fmt="text"` forces every file to that format.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

JSONL_EXT = (".jsonl", ".json", ".ndjson")
TEXT_EXT = (".txt", ".md", ".rst", ".text")
FORMATS = ("auto", "jsonl", "jsonl.gz", "jsonl.zst", "parquet", "text", "code")


class InputError(ValueError):
    """A bad `--input`: nothing matched, or an unknown format. The message names the input."""


def file_format(path: str) -> str | None:
    """The format of one corpus file from its name, or None when it is not a corpus shard."""
    name = path.lower()
    for comp, fmt in ((".gz", "jsonl.gz"), (".zst", "jsonl.zst"), (".zstd", "jsonl.zst")):
        if name.endswith(comp):
            stem = name[: -len(comp)]
            if stem.endswith(JSONL_EXT):
                return fmt
            return None
    if name.endswith(JSONL_EXT):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(TEXT_EXT):
        return "text"
    return None


def walk_files(root: str) -> list[str]:
    """Every regular file under `root`, sorted, skipping hidden directories (.git, ...) and symlinked dirs."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        out.extend(os.path.join(d, f) for f in sorted(files) if not f.startswith("."))
    return sorted(out)


def expand_inputs(inputs: str | Iterable[str], fmt: str = "auto") -> list[tuple[str, str]]:
    """[(path, format)] for every file named by `inputs`, in a deterministic (sorted) order."""
    if fmt not in FORMATS:
        raise InputError(f"--input-format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [os.fspath(inputs)]
    out: list[tuple[str, str]] = []
    for spec in inputs:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            files = walk_files(spec)
            if fmt != "auto":
                out += [
                    (f, fmt if fmt in ("code", "text") else (file_format(f) or fmt))
                    for f in files
                    if fmt in ("code", "text") or file_format(f) == fmt
                ]
                continue
            # plain *.json inside a directory is metadata (e.g. summary.json), not a shard; name it to read it
            shards = [(f, file_format(f)) for f in files if file_format(f) and not f.lower().endswith(".json")]
            if not shards:
                raise InputError(
                    f"--input {spec}: a directory with no corpus files (.jsonl[.gz|.zst], .parquet, .txt/.md/.rst); "
                    f"to read it as a source tree (one document per file) pass --input-format code"
                )
            out += shards
            continue
        paths = sorted(glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [spec]
        paths = [p for p in paths if os.path.isfile(p)]
        if not paths:
            raise InputError(f"--input {spec}: no such file, directory or matching glob")
        for p in paths:
            f = fmt if fmt != "auto" else file_format(p)
            if f is None:
                raise InputError(
                    f"--input {p}: unknown corpus format (expected .jsonl[.gz|.zst], .parquet, "
                    f".txt/.md, or --input-format code/text)"
                )
            out.append((p, f))
    if not out:
        raise InputError(f"--input {' '.join(map(str, inputs))}: no corpus files found")
    return out
