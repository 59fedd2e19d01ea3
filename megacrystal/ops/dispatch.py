"""Pick the implementation of a fused op: Triton on CUDA tensors when Triton imports, else the
plain-torch reference. `impl` is the config's `model.kernels`: auto | triton | torch.
The choice is logged once per (op, implementation, device)."""
from __future__ import annotations

import importlib
from typing import Callable

from ..log import say_once

# op name -> (reference "module:function", triton "module:function")
OPS: dict[str, tuple[str, str]] = {
    "norm": ("megacrystal.ops.norm:norm_reference", "megacrystal.ops.norm:norm_triton"),
    "rotary": ("megacrystal.ops.rotary:rotary_reference", "megacrystal.ops.rotary:rotary_triton"),
    "swiglu": ("megacrystal.ops.swiglu:swiglu_reference", "megacrystal.ops.swiglu:swiglu_triton"),
    "cross_entropy": ("megacrystal.ops.cross_entropy:cross_entropy_reference",
                      "megacrystal.ops.cross_entropy:cross_entropy_triton"),
}

_cache: dict[str, Callable | None] = {}


def _load(spec: str) -> Callable | None:
    if spec not in _cache:
        mod, fn = spec.split(":")
        try:
            _cache[spec] = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            _cache[spec] = None
            say_once(f"noimpl-{spec}", f"{spec} unavailable ({e}); using the torch reference")
    return _cache[spec]


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        return True
    except ImportError:
        return False


def resolve(name: str, impl: str, device_type: str) -> tuple[str, Callable]:
    ref_spec, tri_spec = OPS[name]
    if impl == "torch":
        return "torch", _load(ref_spec)
    want_triton = impl == "triton" or (impl == "auto" and device_type == "cuda")
    if want_triton:
        fn = _load(tri_spec) if triton_available() else None
        if fn is not None:
            return "triton", fn
        if impl == "triton":
            raise RuntimeError(f"model.kernels=triton but the Triton {name} kernel is unavailable "
                               f"(is the `triton` package installed?)")
    return "torch", _load(ref_spec)


def op(name: str, impl: str = "auto") -> Callable:
    def call(x, *args, **kwargs):
        which, fn = resolve(name, impl, x.device.type)
        say_once(f"op-{name}-{which}-{x.device.type}", f"{name}: {which} kernel on {x.device.type}")
        return fn(x, *args, **kwargs)
    return call
