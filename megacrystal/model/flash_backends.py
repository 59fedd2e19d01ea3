"""The flash-attention packages, what each needs, and the order `auto` tries them in.

  fa3  flash-attn 3 (`flash_attn_interface`, built from the flash-attn repo's hopper/ directory): sm 9.x
  fa4  FlashAttention 4 (`flash_attn.cute`, PyPI wheel `flash-attn-4`, CuTe DSL, JIT-compiled): training
       (forward + backward) on sm 9.x and 10.x-12.x (Hopper, Blackwell)
  fa2  flash-attn 2 (`flash_attn`, PyPI `flash-attn`: a source build against the local CUDA torch): sm >= 8.0

Order for `auto` on a bf16/fp16 CUDA tensor: on Hopper fa3 (the tuned Hopper kernel), fa4, fa2; on
Blackwell and newer fa4 (fa3 has no Blackwell kernels), fa2; on Ampere fa2. The first installed one that
supports the device runs; none: SDPA. Detection uses `importlib.util.find_spec` first, so a package
that is absent costs nothing. Note: the `flash-attn-4` wheel installs `flash_attn/cute/` only, so a bare
`import flash_attn` succeeds as a namespace package without FA2; fa2 is recognised by `flash_attn_func`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

import torch

from ..log import say_once

MODULES = {"fa3": "flash_attn_interface", "fa4": "flash_attn.cute", "fa2": "flash_attn"}
PACKAGES = {"fa3": "flash-attn 3 (hopper/ of the flash-attn repo)", "fa4": "flash-attn-4", "fa2": "flash-attn"}
INSTALL = {
    "fa3": "git clone https://github.com/Dao-AILab/flash-attention && cd flash-attention/hopper && pip install --no-build-isolation .",
    "fa4": "pip install 'megacrystal[fa4]'  (the flash-attn-4 wheel)",
    "fa2": "pip install --no-build-isolation flash-attn  (a source build: CUDA torch + nvcc, long compile)",
}


def supported_capability(name: str, cap: tuple[int, int]) -> bool:
    major = cap[0]
    if name == "fa3":
        return major == 9
    if name == "fa4":
        return 9 <= major <= 12
    return major >= 8


def order(cap: tuple[int, int]) -> list[str]:
    """The flavours `auto` tries on a device of this compute capability, best first."""
    if cap[0] == 9:
        return ["fa3", "fa4", "fa2"]
    if cap[0] >= 10:
        return ["fa4", "fa2"]
    return ["fa2"]


@functools.cache
def module(name: str):
    """The flavour's module with its flash_attn_func / flash_attn_varlen_func, or None."""
    mod_name = MODULES[name]
    try:
        if importlib.util.find_spec(mod_name.split(".")[0]) is None:
            return None
        mod = importlib.import_module(mod_name)
    except ImportError:
        return None
    except Exception as e:  # a broken build (ABI mismatch) must not take the model down
        say_once(f"flash-broken-{name}", f"{mod_name} failed to import ({e}); not using it")
        return None
    if not (hasattr(mod, "flash_attn_func") and hasattr(mod, "flash_attn_varlen_func")):
        return None
    return mod


def installed() -> list[str]:
    return [n for n in MODULES if module(n) is not None]


def pick(device: torch.device, wanted: str | None = None) -> tuple[str | None, str]:
    """(flavour, why) for a CUDA device: `wanted` (fa2/fa3/fa4) or the first of `order` that is installed."""
    if device.type != "cuda":
        return None, f"flash kernels need CUDA, the device is {device.type}"
    cap = torch.cuda.get_device_capability(device)
    names = [wanted] if wanted else order(cap)
    for n in names:
        if module(n) is None:
            continue
        if supported_capability(n, cap):
            return n, f"{n} ({MODULES[n]}) on sm {cap[0]}.{cap[1]}"
    missing = ", ".join(f"{n}: {INSTALL[n]}" for n in names if module(n) is None)
    return None, f"no flash kernel for sm {cap[0]}.{cap[1]} among {names}" + (
        f" (install {missing})" if missing else ""
    )


def call(name: str, q, k, v, scale: float, segment_ids, varlen_driver):
    """Run flavour `name` through `varlen_driver` (attention.attention_varlen) with its calling convention."""
    mod = module(name)
    if name == "fa4":  # its 4th positional parameter is `qv`: pass everything else by keyword
        dense = lambda q_, k_, v_, softmax_scale, causal: mod.flash_attn_func(
            q_, k_, v_, softmax_scale=softmax_scale, causal=causal
        )
        varlen = lambda q_, k_, v_, cu_q, cu_k, max_q, max_k, softmax_scale, causal: mod.flash_attn_varlen_func(
            q_, k_, v_, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
            softmax_scale=softmax_scale, causal=causal,
        )  # fmt: skip
        return varlen_driver(q, k, v, scale, segment_ids, dense, varlen)
    return varlen_driver(q, k, v, scale, segment_ids, mod.flash_attn_func, mod.flash_attn_varlen_func)
