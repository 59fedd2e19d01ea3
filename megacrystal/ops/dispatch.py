"""Pick the implementation of a fused op: Triton on CUDA tensors when Triton imports, else the
plain-torch reference. `impl` is the config's `model.kernels`: auto | triton | torch.
`model.kernels=triton` on CPU runs the kernels under Triton's interpreter (TRITON_INTERPRET=1 must be set
before triton is imported) -- that is how the tests check them without a GPU.
The norm may instead use apex's fused kernel (`model.use_apex_norm`) on CUDA when NVIDIA apex with its
fused norm extension is installed (`compiled/apex.py`: detected without importing an apex that lacks it).
The choice is logged once per (op, implementation, device)."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable

from ..compiled.apex import usable as apex_usable
from ..log import say_once

# op name -> (reference "module:function", triton "module:function")
OPS: dict[str, tuple[str, str]] = {
    "norm": ("megacrystal.ops.norm:norm_reference", "megacrystal.ops.triton_norm:norm_triton"),
    "rotary": ("megacrystal.ops.rotary:rotary_reference", "megacrystal.ops.triton_rotary:rotary_triton"),
    "qkv_rotary": ("megacrystal.ops.rotary:qkv_rotary_reference", "megacrystal.ops.triton_rotary:qkv_rotary_triton"),
    "swiglu": ("megacrystal.ops.swiglu:swiglu_reference", "megacrystal.ops.triton_swiglu:swiglu_triton"),
    "cross_entropy": (
        "megacrystal.ops.cross_entropy:cross_entropy_reference",
        "megacrystal.ops.triton_cross_entropy:cross_entropy_triton",
    ),
}
APEX_NORM = "megacrystal.ops.norm:norm_apex"

_cache: dict[str, Callable | None] = {}


def _load(spec: str, quiet: bool = False) -> Callable | None:
    if spec not in _cache:
        mod, fn = spec.split(":")
        try:
            _cache[spec] = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            _cache[spec] = None
            if not quiet:
                say_once(f"noimpl-{spec}", f"{spec} unavailable ({e}); using the torch reference")
    return _cache[spec]


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401

        return True
    except ImportError:
        return False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve(name: str, impl: str, device_type: str, apex: bool = False) -> tuple[str, Callable]:
    ref_spec, tri_spec = OPS[name]
    if apex and name == "norm" and device_type == "cuda":
        fn = _load(APEX_NORM, quiet=True) if apex_usable("fused_norm") else None
        if fn is not None:
            return "apex", fn
        say_once(
            "apex-norm-missing",
            "model.use_apex_norm: NVIDIA apex's fused norm is not installed; using the other norm kernels",
        )
    if impl == "torch":
        return "torch", _load(ref_spec)
    # on meta (a rehearsal) the GPU's choice: the Triton wrappers allocate and save what they do on CUDA
    want_triton = impl == "triton" or (impl == "auto" and device_type in ("cuda", "meta"))
    if want_triton:
        if impl == "triton" and device_type not in ("cuda", "meta") and not _interpreting():
            raise RuntimeError(
                f"model.kernels=triton on {device_type}: compiled Triton needs CUDA; on CPU set "
                f"TRITON_INTERPRET=1 (before triton is imported) or use model.kernels=torch/auto"
            )
        fn = _load(tri_spec) if triton_available() else None
        if fn is not None:
            return "triton", fn
        if impl == "triton":
            raise RuntimeError(
                f"model.kernels=triton but the Triton {name} kernel is unavailable (is the `triton` package installed?)"
            )
    return "torch", _load(ref_spec)


def op(name: str, impl: str = "auto", apex: bool = False) -> Callable:
    chosen: dict[str, Callable] = {}  # device type -> implementation, decided at its first call

    def call(x, *args, **kwargs):
        fn = chosen.get(x.device.type)
        if fn is None:  # (after the first call a plain lookup, which torch.compile traces through)
            which, fn = resolve(name, impl, x.device.type, apex)
            say_once(f"op-{name}-{which}-{x.device.type}", f"{name}: {which} kernel on {x.device.type}")
            chosen[x.device.type] = fn
        return fn(x, *args, **kwargs)

    return call
