"""Logging: one logger for the package, rank-aware, and one-line notices said once."""

from __future__ import annotations

import logging
import os
import sys

_said: set[str] = set()


def get_logger(name: str = "megacrystal") -> logging.Logger:
    root = logging.getLogger("megacrystal")
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
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
