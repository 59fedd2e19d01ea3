"""NVIDIA apex, detected by its own modules before anything of it is imported.

NVIDIA apex is not on PyPI (the registry's `apex` is an unrelated 2013 web toolkit), so there is no
`apex` extra: it is built from source (BUILD_RECIPE, docs/kernels.md). This module looks for the
pieces the project can use -- files of the `apex` package and its compiled CUDA extensions -- with
`importlib.util.find_spec`, which locates modules without running them. An `apex` without them is
reported as "not NVIDIA apex" in one log line and never imported; where apex would be used and is
absent, the project's own kernels run (Triton norm, the fused AdamW of kernels/cuda/ or torch).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from ..log import say_once

BUILD_RECIPE = (
    "git clone https://github.com/NVIDIA/apex && cd apex && "
    'TORCH_CUDA_ARCH_LIST="8.0;9.0;10.0" pip install -v --disable-pip-version-check --no-cache-dir '
    '--no-build-isolation --config-settings "--build-option=--cpp_ext" --config-settings "--build-option=--cuda_ext" ./'
)

# piece -> (file inside the apex package or None, compiled extension module); both must be present
PIECES: dict[str, tuple[str | None, str]] = {
    "fused_norm": ("normalization/fused_layer_norm.py", "fused_layer_norm_cuda"),
    "fused_adam": ("optimizers/fused_adam.py", "amp_C"),  # multi_tensor_adam
    "fused_wgrad": (None, "fused_weight_gradient_mlp_cuda"),  # Megatron's gradient-accumulation fusion
}


def _spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


@functools.cache
def status() -> dict:
    """{installed: bool, nvidia: bool, pieces: {piece: bool}, where: str, detail: str}; imports nothing of apex."""
    spec = _spec("apex")
    if spec is None or not spec.submodule_search_locations:
        return dict(installed=False, nvidia=False, pieces={k: False for k in PIECES}, where="", detail="not installed")
    roots = [Path(p) for p in spec.submodule_search_locations]
    pieces = {
        k: (f is None or any((r / f).exists() for r in roots)) and _spec(ext) is not None
        for k, (f, ext) in PIECES.items()
    }
    has_python = any((r / "optimizers").is_dir() and (r / "normalization").is_dir() for r in roots)
    nvidia = has_python and any(pieces.values())
    if not has_python:
        detail = "not NVIDIA apex (no apex.optimizers / apex.normalization): another package named apex"
    elif not nvidia:
        detail = "NVIDIA apex without its CUDA extensions (a Python-only build): rebuild with --cuda_ext"
    else:
        detail = "NVIDIA apex: " + ", ".join(k for k, v in pieces.items() if v)
    return dict(installed=True, nvidia=nvidia, pieces=pieces, where=str(roots[0]), detail=detail)


def usable(piece: str) -> bool:
    """Is NVIDIA apex's `piece` there? Logs once why not when an `apex` is installed but lacks it."""
    st = status()
    if st["pieces"].get(piece):
        return True
    if st["installed"]:
        say_once(f"apex-{piece}", f"apex at {st['where']}: {st['detail']}; not using it for {piece}")
    return False


def apex_fused_adam():
    """apex.optimizers.FusedAdam when NVIDIA apex has it, else None."""
    if not usable("fused_adam"):
        return None
    from apex.optimizers import FusedAdam

    return FusedAdam
