"""Files written whole or not at all: every output the package writes (checkpoint markers, reports,
figures, configurations, records, caches) goes through here.

A file is written under a hidden temporary name that only its writer uses (`own_temp`: process id
and a counter, so two processes or threads writing the same file never share one), fsync'ed and
renamed over its name; on failure the name keeps what it had and the temporary file is removed.
`write_new` publishes with a hard link instead, so it never replaces a file that exists.
A leaf module (standard library only): cheap to import from any command.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

_TEMPS = itertools.count()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def own_temp(path: Path, suffix: str = ".tmp") -> Path:
    """A hidden name beside `path` that only this writer uses (process id and a counter): writers of the
    same file at once, in processes or threads, never share a temporary file."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{next(_TEMPS)}{suffix}")


def _written_temp(path: Path, data: bytes | str) -> Path:
    tmp = own_temp(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written file left behind (e.g. on a full disk)
        raise
    return tmp


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` (str: UTF-8) to `path` via a fsync'ed temporary file of its own and a rename; on
    failure `path` is unchanged and the temporary file removed."""
    path = Path(path)
    tmp = _written_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy the file `src` to `dst` as `atomic_write` writes (fsync'ed, renamed into place)."""
    dst = Path(dst)
    tmp = own_temp(dst)
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dst.parent)


def write_new(path: Path, data: bytes | str) -> bool:
    """Write `data` to `path` as `atomic_write` does unless `path` exists; -> whether it was written."""
    path = Path(path)
    tmp = _written_temp(path, data)
    try:
        os.link(tmp, path)  # atomic, and refuses an existing name
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    fsync_dir(path.parent)
    return True
