"""One preprocessing run per output prefix, and what a killed run leaves behind.

    with OutputLock(prefix, tmp_names) as lock:   # another live run on the prefix -> OutputBusy
        lock.leftovers                            # our own *.tmp names found (and removed) at the start

A run holds an flock on `{prefix}.preprocess.lock` (the kernel drops it when the process dies, even
by SIGKILL). Outputs are written as `*.tmp` and renamed at the end, so a run killed with SIGKILL,
which gets no chance to clean up, leaves only `*.tmp` files and never a half-written published
file. The next run on the same prefix takes the lock, so no live run owns those names, and removes
exactly the `*.tmp` names it is about to write itself (never a published file or anything else).
The lock file is removed when the run ends.
"""

from __future__ import annotations

import fcntl
import os


class OutputBusy(RuntimeError):
    """Another live preprocessing run writes to this output prefix."""


class OutputLock:
    def __init__(self, prefix: str, tmp_names):
        self.path = f"{prefix}.preprocess.lock"
        self.tmp_names = list(tmp_names)
        self.leftovers: list[str] = []
        self._fd = -1

    def __enter__(self) -> OutputLock:
        for _ in range(10):  # the file may be unlinked by a finishing run between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputBusy(f"{self.path}: another preprocessing run is writing this output prefix") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                break
            os.close(fd)
        else:
            raise OutputBusy(f"{self.path}: could not take the lock")
        for p in self.tmp_names:
            if os.path.isfile(p):
                os.remove(p)
                self.leftovers.append(p)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd >= 0:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = -1
