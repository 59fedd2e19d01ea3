"""A hash of this package's Python source, for caches whose entries depend on what the code does:
the planner's rehearsed layer costs (rehearsal/plan_costs.py) and torch.compile's on-disk graphs
(model/compile.py). A change anywhere in the package is a new version; nothing is reused across it."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]
