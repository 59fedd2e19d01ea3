"""Where a call came from: the innermost frames of the project (its package, tests, benchmarks and tools;
not the rehearsal's own frames, not torch's)."""

from __future__ import annotations

import functools
import os
import sys

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../megacrystal
ROOT = os.path.dirname(_PKG)
_OWN = os.path.join(_PKG, "rehearsal") + os.sep
_TOPS = {"megacrystal", "tests", "benchmarks", "tools", "data_tools"}


@functools.lru_cache(maxsize=4096)
def ours(fn: str) -> bool:
    """Is `fn` a file of this project (and not of the rehearsal)?"""
    if not fn.startswith(ROOT) or fn.startswith(_OWN):
        return False
    return fn[len(ROOT) :].lstrip(os.sep).split(os.sep, 1)[0] in _TOPS


@functools.lru_cache(maxsize=4096)
def relative(fn: str) -> str:
    return os.path.relpath(fn, ROOT)


def project_frames(depth: int = 3, skip: int = 1) -> list[str]:
    """Up to `depth` frames of project code, innermost first, as "path:line function"."""
    f = sys._getframe(skip + 1)
    out: list[str] = []
    while f is not None and len(out) < depth:
        fn = f.f_code.co_filename
        if ours(fn):
            out.append(f"{relative(fn)}:{f.f_lineno} {f.f_code.co_name}")
        f = f.f_back
    return out


def where(depth: int = 3, skip: int = 1) -> str:
    """The call site as one string: the innermost project frame, then its callers ("<-")."""
    frames = project_frames(depth, skip + 1)
    return " <- ".join(frames) if frames else "(outside megacrystal)"
