"""Index arrays cached as `.npy` files, keyed by a hash of everything that determines them.

    arrays, meta = cached("gpt", description, build, cache_dir, group=None)

`description` is a JSON-able dict of every input (file fingerprints, lengths, seeds, version).
Files: `{cache_dir}/{kind}-{hash}-{name}.npy` per array and `{kind}-{hash}-description.json`,
which repeats the description and records each array's shape and dtype (+ `meta`, small
results such as counts). The description is written last, so a half-written cache is never
taken for a complete one.

Who builds: with a process group (a host group: the handshake's tensor lives on the CPU, so an
NCCL group is refused with a message), its rank 0 builds (under the file lock) and the others wait
on a collective that also carries rank 0's success, so a failure on rank 0 raises everywhere
instead of hanging; without one, every process takes an exclusive file lock, and the first
builds. Then all memory-map.

A cache whose description differs from the expected one (foreign), or whose arrays are missing,
unreadable or of another shape/dtype (stale or damaged), is never used: the builder says why
in the log and rebuilds it; a waiting rank that still finds it bad raises `IndexCacheError`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..log import get_logger

FORMAT_VERSION = 1
log = get_logger("megacrystal.data.index_cache")


class IndexCacheError(RuntimeError):
    """A cache that cannot be used (foreign, stale, damaged) where it cannot be rebuilt."""


def description_hash(description: dict) -> str:
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def array_fingerprint(a: np.ndarray) -> str:
    """Content hash of an array (dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()


def _paths(cache_dir: str, kind: str, key: str, names) -> tuple[Path, dict]:
    base = Path(cache_dir)
    return base / f"{kind}-{key}-description.json", {n: base / f"{kind}-{key}-{n}.npy" for n in names}


def load(cache_dir: str, kind: str, description: dict) -> tuple[dict, dict]:
    """Memory-map a complete, matching cache; raise IndexCacheError saying what is wrong."""
    key = description_hash(description)
    desc_path, _ = _paths(cache_dir, kind, key, [])
    if not desc_path.is_file():
        raise IndexCacheError(f"{desc_path}: not built yet")
    try:
        record = json.loads(desc_path.read_text())
    except (OSError, ValueError) as e:
        raise IndexCacheError(f"{desc_path}: unreadable description ({e})") from None
    if record.get("format") != FORMAT_VERSION or record.get("description") != description:
        raise IndexCacheError(f"{desc_path}: foreign cache (its description does not match these inputs)")
    _, paths = _paths(cache_dir, kind, key, record.get("arrays", {}))
    out = {}
    for name, spec in record["arrays"].items():
        p = paths[name]
        try:
            a = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise IndexCacheError(f"{p}: missing or unreadable ({e})") from None
        if list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"]:
            raise IndexCacheError(
                f"{p}: stale or damaged: shape {list(a.shape)} dtype {a.dtype.str}, "
                f"description says {spec['shape']} {spec['dtype']}"
            )
        out[name] = a
    return out, record.get("meta", {})


def save(cache_dir: str, kind: str, description: dict, arrays: dict, meta: dict) -> None:
    key = description_hash(description)
    desc_path, paths = _paths(cache_dir, kind, key, arrays)
    desc_path.parent.mkdir(parents=True, exist_ok=True)
    if desc_path.exists():
        desc_path.unlink()  # invalidate first: arrays are replaced below
    for name, a in arrays.items():
        fd, tmp = tempfile.mkstemp(dir=desc_path.parent, prefix=f".{paths[name].name}.")
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(a), allow_pickle=False)
        os.replace(tmp, paths[name])
    record = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "description": description,
        "meta": meta,
        "arrays": {n: {"shape": list(a.shape), "dtype": a.dtype.str} for n, a in arrays.items()},
    }
    fd, tmp = tempfile.mkstemp(dir=desc_path.parent, prefix=f".{desc_path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(tmp, desc_path)


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load_or_build(cache_dir: str, kind: str, description: dict, build: Callable[[], tuple[dict, dict]]):
    key = description_hash(description)
    with _file_lock(Path(cache_dir) / f"{kind}-{key}.lock"):
        try:
            return load(cache_dir, kind, description)
        except IndexCacheError as e:
            if "not built yet" not in str(e):
                log.warning(f"index cache not used, rebuilding: {e}")
        arrays, meta = build()
        save(cache_dir, kind, description, arrays, meta)
    return load(cache_dir, kind, description)


def cached(
    kind: str, description: dict, build: Callable[[], tuple[dict, dict]], cache_dir: str | None, group=None
) -> tuple[dict, dict]:
    """Arrays (memory-mapped when cached) and meta for `description`; `build()` -> (arrays, meta).

    `group`: a torch.distributed process group whose rank 0 builds (None: the default group
    when one is initialised, else file locking only). Pass `False` to force file locking.
    """
    description = {"format": FORMAT_VERSION, "kind": kind, **description}
    if cache_dir is None:
        return build()
    dist = None
    dist_mod = sys.modules.get("torch.distributed")  # not imported: no process group can exist
    if group is not False and dist_mod is not None and dist_mod.is_available() and dist_mod.is_initialized():
        dist = dist_mod
    if dist is None:
        return _load_or_build(cache_dir, kind, description, build)

    import torch

    from ..parallel.host_group import carries_host_tensors

    g = None if group is None else group
    if not carries_host_tensors(g):
        raise IndexCacheError(
            f"index cache {cache_dir}: the {dist.get_backend(g)} process group takes no host tensors; "
            f"pass a host (gloo) group (parallel.host_group) for this handshake"
        )
    rank = dist.get_rank(g)
    ok = torch.ones(1, dtype=torch.int32)
    error = None
    if rank == 0:
        try:
            _load_or_build(cache_dir, kind, description, build)
        except BaseException as e:  # tell the others before raising, so nobody hangs
            ok.zero_()
            error = e
    dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=g)
    if error is not None:
        raise error
    if int(ok.item()) == 0:
        raise IndexCacheError(f"{cache_dir}: rank 0 of the group failed to build the {kind} index (see rank 0's error)")
    try:
        return load(cache_dir, kind, description)
    except IndexCacheError as e:
        raise IndexCacheError(f"{e} (after rank 0 built it: is {cache_dir} shared by all ranks?)") from None
