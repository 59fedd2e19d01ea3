"""`model.compile: true`: each transformer block's forward compiled with `torch.compile` (inductor:
C++/OpenMP on CPU, Triton on GPU), once per block class shape — every block reuses the graph.

Where it cannot run it falls back to eager with one log line: before compiling (a torch without a
working dynamo for this Python, no C++ compiler for CPU inductor, no Triton for GPU inductor) and at
the first call (a compile error: the block runs eager from then on). The module's `__call__` stays
eager, so forward pre-hooks (ZeRO-1's parameter-gather waits) run outside the compiled graph.

Inductor keeps compiled graphs on disk and reuses them by a key that does not cover all of this
package's code: a graph cached by another version of megacrystal was seen to be reused and give NaN
where eager was right. Unless the user points TORCHINDUCTOR_CACHE_DIR somewhere of their own,
compiled graphs go to a directory per torch version and package version (`inductor_cache_dir`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from ..code_version import code_version
from ..log import say_once

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def inductor_cache_dir() -> str:
    """$XDG_CACHE_HOME/megacrystal/inductor/torch-<version>-<package code hash> (else ~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return str(Path(base) / "megacrystal" / "inductor" / f"torch-{torch.__version__}-{code_version()}")


def use_own_inductor_cache() -> str:
    """Point inductor at `inductor_cache_dir()` unless the user chose a directory (inductor itself
    writes its default into the environment on first use: that one is replaced). Returns the dir."""
    current = os.environ.get(CACHE_ENV)
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        default = os.path.abspath(default_cache_dir())
    except Exception:  # another torch layout: only an unset variable is ours to set
        default = None
    if current is None or (default is not None and os.path.abspath(current) == default):
        os.environ[CACHE_ENV] = inductor_cache_dir()
    return os.environ[CACHE_ENV]


def why_not() -> str | None:
    """Why torch.compile cannot run here, or None."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        import torch._dynamo as dynamo

        if hasattr(dynamo, "is_dynamo_supported") and not dynamo.is_dynamo_supported():
            return f"dynamo does not support this Python/platform with torch {torch.__version__}"
    except Exception as e:  # any import failure means no compile
        return f"torch._dynamo unavailable ({type(e).__name__}: {str(e)[:80]})"
    if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        return "no C++ compiler on PATH for CPU inductor"
    return None


class CompiledForward:
    """A block's forward: the compiled one until it fails once, then the eager one."""

    broken: str | None = None  # once one block failed to compile, all run eager

    def __init__(self, eager):
        self.eager = eager
        self.compiled = torch.compile(eager)
        self.calls = 0

    def __call__(self, *args, **kwargs):
        if kwargs.get("cache") is not None or (len(args) > 6 and args[6] is not None):
            return self.eager(*args, **kwargs)  # decoding with a KV cache (Block's 7th argument) runs eager
        self.calls += 1
        if self.calls == 1 and CompiledForward.broken is None:
            with torch.no_grad():  # once, eager and discarded: kernels chosen and logged outside the graph
                self.eager(*args, **kwargs)
        if CompiledForward.broken is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # any compile failure: run eager, said once
                CompiledForward.broken = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                say_once(
                    "compile-failed",
                    f"model.compile: compiling a block failed ({CompiledForward.broken}); running eager",
                    logging.WARNING,
                )
        return self.eager(*args, **kwargs)


def compile_blocks(blocks: list[nn.Module]) -> int:
    """Compile each block's forward in place; returns how many (0 when compiling cannot run here)."""
    reason = why_not()
    if reason is not None:
        say_once("compile-unavailable", f"model.compile: {reason}; running eager", logging.WARNING)
        return 0
    cache = use_own_inductor_cache()
    for b in blocks:
        b.forward = CompiledForward(b.forward)
    say_once(
        "compile-on",
        f"model.compile: {len(blocks)} blocks compiled with torch.compile (torch {torch.__version__}; cache {cache})",
    )
    return len(blocks)
