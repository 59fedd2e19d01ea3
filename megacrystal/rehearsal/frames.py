"""Where a call came from: the innermost frames of the project (not the rehearsal's own, not torch's)."""

from __future__ import annotations

import os
import sys

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../megacrystal
_ROOT = os.path.dirname(_PKG)
_OWN = os.path.join(_PKG, "rehearsal") + os.sep


def project_frames(depth: int = 3, skip: int = 1) -> list[str]:
    """Up to `depth` frames of megacrystal code, innermost first, as "path:line function"."""
    f = sys._getframe(skip + 1)
    out: list[str] = []
    while f is not None and len(out) < depth:
        fn = f.f_code.co_filename
        if fn.startswith(_PKG) and not fn.startswith(_OWN):
            out.append(f"{os.path.relpath(fn, _ROOT)}:{f.f_lineno} {f.f_code.co_name}")
        f = f.f_back
    return out


def where(depth: int = 3, skip: int = 1) -> str:
    """The call site as one string: the innermost project frame, then its callers ("<-")."""
    frames = project_frames(depth, skip + 1)
    return " <- ".join(frames) if frames else "(outside megacrystal)"
