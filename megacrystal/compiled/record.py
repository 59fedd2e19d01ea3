"""The record that this build of the CUDA kernels passed its checks on this kind of GPU, kept in the user's
cache directory (written by `megacrystal doctor --verify`, read by `optim.impl: auto`).

    $XDG_CACHE_HOME/megacrystal/ (else ~/.cache/megacrystal/)
        cuda-kernels-<build id>-sm<capability>.json   {build_id, capability, gpu, passed, checks, versions, date}

One file per (build id, compute capability): a verification never touches another build's or another GPU
generation's record; a new verification of the same pair replaces its own record (atomic write), so the
latest result counts. An unreadable record counts as none.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..atomic_io import atomic_write

_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


class RecordError(ValueError):
    pass


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/megacrystal when XDG_CACHE_HOME is an absolute path (the XDG rule), else
    ~/.cache/megacrystal."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "megacrystal"


def record_path(build_id: str, capability: str, directory: Path | None = None) -> Path:
    for what, v in (("build id", build_id), ("capability", capability)):
        if not isinstance(v, str) or not _SAFE.match(v):
            raise RecordError(f"CUDA kernel record: {what} {v!r} is not a plain name")
    return (directory or cache_dir()) / f"cuda-kernels-{build_id}-sm{capability}.json"


def read_record(build_id: str, capability: str | None, directory: Path | None = None) -> dict | None:
    """The record of this (build, capability), or None when there is none or it cannot be read."""
    if capability is None:
        return None
    try:
        path = record_path(build_id, capability, directory)
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("build_id") != build_id or rec.get("capability") != capability:
        return None
    return rec


def verified(build_id: str, capability: str | None, directory: Path | None = None) -> dict | None:
    """The record when it says the checks passed, else None."""
    rec = read_record(build_id, capability, directory)
    return rec if rec is not None and rec.get("passed") is True else None


def write_record(record: dict, directory: Path | None = None) -> Path:
    """Write `record` (it names its build_id and capability) atomically; returns its path."""
    path = record_path(record.get("build_id"), record.get("capability"), directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, indent=1) + "\n")
    return path
