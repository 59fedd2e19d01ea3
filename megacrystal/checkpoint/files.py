"""Checkpoint directories on disk: checksums, verification, finding the resume point, retention
(files are written with `atomic_io.atomic_write`).

Integrity: `manifest.json` (written last, atomically) records the size and crc32 of every file of a
checkpoint. A checkpoint without it is incomplete; one whose files differ from it is damaged. Both
are reported in one line naming the file. Verification can be spread over the ranks of a process
group (file i checked by rank i mod world) and its verdict is the same on every rank.

Nothing here deletes a checkpoint except retention, and retention only counts and removes complete
checkpoints (never one that is protected, e.g. the one the run resumed from); a missing `latest`
marker changes nothing but a log line.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import torch.distributed as dist

from ..atomic_io import atomic_write
from ..log import get_logger
from .format import FORMAT, MANIFEST, OLD_SHARD, STEP_DIR, TRAINER, VERSION, CheckpointError

CHUNK = 8 << 20


def file_crc(path: Path) -> tuple[int, int]:
    """(size in bytes, crc32) of a file."""
    crc, size = 0, 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                break
            crc = zlib.crc32(b, crc)
            size += len(b)
    return size, crc


def write_manifest(ckpt: Path, files: dict[str, tuple[int, int]]) -> None:
    man = {"format": FORMAT, "version": VERSION, "files": {k: {"bytes": s, "crc32": c} for k, (s, c) in files.items()}}
    atomic_write(ckpt / MANIFEST, (json.dumps(man, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return obj


def is_old_format(ckpt: Path) -> bool:
    return not (ckpt / MANIFEST).exists() and any(OLD_SHARD.match(p.name) for p in ckpt.iterdir())


def manifest_files(ckpt: Path) -> dict[str, dict]:
    """The manifest's file table; CheckpointError (one line) when it is missing or not ours."""
    ckpt = Path(ckpt)
    if is_old_format(ckpt):
        model = ckpt / "model"
        raise CheckpointError(
            f"{ckpt}: a checkpoint of the old per-rank format (shard_tp*_pp*_dp*.pt), which this version cannot "
            f"resume; start a new run from its weights with train.init_from={model}"
        )
    path = ckpt / MANIFEST
    if not path.exists():
        raise CheckpointError(f"{path}: missing, the checkpoint is incomplete (a save that did not finish)")
    man = read_json(path)
    if man.get("format") != FORMAT or not isinstance(man.get("files"), dict):
        raise CheckpointError(f"{path}: not a {FORMAT} manifest")
    if man.get("version") != VERSION:
        raise CheckpointError(f"{path}: format version {man.get('version')!r}, this build reads {VERSION}")
    return man["files"]


def check_file(ckpt: Path, name: str, want: dict) -> str | None:
    """Why file `name` of `ckpt` does not match its manifest entry (None when it does)."""
    path = Path(ckpt) / name
    if not path.is_file():
        return f"{path}: missing (listed in {MANIFEST})"
    size = path.stat().st_size
    if size != want.get("bytes"):
        return f"{path}: {size} bytes, {MANIFEST} says {want.get('bytes')} (truncated or replaced)"
    _, crc = file_crc(path)
    if crc != want.get("crc32"):
        return f"{path}: checksum mismatch (crc32 {crc:08x}, {MANIFEST} says {want.get('crc32'):08x}): damaged"
    return None


def _world(group) -> tuple[int, int]:
    if group is None or not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def verify(ckpt: Path, group=None) -> str | None:
    """The first problem with checkpoint `ckpt` (one line naming the file), or None when intact.
    With a process group, every rank of it must call this; the files are checked in parallel."""
    rank, world = _world(group)
    problem = None
    try:
        files = manifest_files(ckpt)
        for i, (name, want) in enumerate(sorted(files.items())):
            if i % world == rank:
                problem = check_file(ckpt, name, want)
                if problem:
                    break
    except CheckpointError as e:
        problem = str(e)
    if world > 1:
        every = [None] * world
        dist.all_gather_object(every, problem, group=group)
        problem = next((p for p in every if p), None)
    return problem


def checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every `step_N` directory under `root`, newest first (complete or not)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def kept_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """(step, dir) of every committed checkpoint (its manifest written) of a run directory, or of a
    `checkpoints/` folder, oldest first: what retention kept. Reading one verifies its checksums."""
    root = Path(run_dir)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    found = [(s, p) for s, p in checkpoint_dirs(root) if (p / MANIFEST).is_file()]
    if not found:
        raise CheckpointError(f"{run_dir}: no committed checkpoint (expected a run directory with checkpoints/step_*)")
    return sorted(found)


def find_resume_point(out_dir, resume: str = "auto", group=None) -> Path | None:
    """The checkpoint a run in `out_dir` resumes from: with `resume="auto"` the newest intact one
    (damaged or incomplete ones are reported and skipped; None when there is none at all); with a
    checkpoint name (`step_00001200`) or a path, exactly that one (CheckpointError when it is not
    intact). Collective over `group` when given (every rank gets the same answer)."""
    log = get_logger()
    root = Path(out_dir) / "checkpoints"
    if resume != "auto":
        path = Path(resume) if os.sep in resume or Path(resume).is_absolute() else root / resume
        if not path.is_dir():
            raise CheckpointError(f"{path}: train.resume names a checkpoint that does not exist")
        problem = verify(path, group)
        if problem:
            raise CheckpointError(f"{problem} (train.resume={resume}: not resuming from another one)")
        return path
    found = checkpoint_dirs(root)
    hint = root / "latest"
    if found and not hint.is_file():
        log.warning(f"{hint}: missing; resuming from the newest intact checkpoint found by scanning")
    first_problem = None
    for _, path in found:
        problem = verify(path, group)
        if problem is None:
            if first_problem is not None:
                log.warning(f"resuming from the older intact checkpoint {path}")
            return path
        log.warning(f"skipping checkpoint {path.name}: {problem}")
        if first_problem is None:
            first_problem = problem
        if is_old_format(path):
            raise CheckpointError(problem)
    if found:
        raise CheckpointError(f"no intact checkpoint in {root}; the newest: {first_problem}")
    return None


def move_aside(path: Path) -> Path:
    """Rename `path` to a free `<name>.replaced-N` (never delete it); returns the new path."""
    n = 1
    while (dst := path.with_name(f"{path.name}.replaced-{n}")).exists():
        n += 1
    os.replace(path, dst)
    return dst


def apply_retention(root: Path, keep: int, keep_every: int = 0, protect: tuple = ()) -> list[Path]:
    """Remove complete checkpoints beyond the newest `keep` (0: keep all), except steps that are a
    multiple of `keep_every` and the `protect`ed paths. Returns what was removed."""
    if keep <= 0:
        return []
    protected = {Path(p).resolve() for p in protect if p}
    complete = [(s, p) for s, p in checkpoint_dirs(root) if (p / MANIFEST).is_file()]
    removed = []
    for step, path in complete[keep:]:
        if (keep_every and step % keep_every == 0) or path.resolve() in protected:
            continue
        doomed = path.with_name(path.name + ".deleting")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(path)
    if removed:
        get_logger().info(f"retention (keep {keep}, keep_every {keep_every}): removed {[p.name for p in removed]}")
    return removed


def trainer_meta(ckpt: Path) -> dict:
    meta = read_json(Path(ckpt) / TRAINER)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{Path(ckpt) / TRAINER}: not written by {FORMAT}")
    return meta
