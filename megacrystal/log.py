"""Logging: one logger for the package, rank-aware, and one-line notices said once."""

from __future__ import annotations

import logging
import os
import sys

_said: set[str] = set()


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever `sys.stderr` is when a record comes (a redirected or captured
    stderr that was closed since the logger was made never turns records into logging errors)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def get_logger(name: str = "megacrystal") -> logging.Logger:
    root = logging.getLogger("megacrystal")
    if not root.handlers:
        h = _Stderr()
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
        h.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(h)
        root.setLevel(os.environ.get("MEGACRYSTAL_LOG", "INFO"))
        root.propagate = False
    return logging.getLogger(name)


def say_once(key: str, message: str, level: int = logging.INFO, name: str = "megacrystal") -> None:
    """Log `message` the first time `key` is seen in this process (e.g. which fast path runs)."""
    if key in _said:
        return
    _said.add(key)
    get_logger(name).log(level, message)
