"""Which implementation runs: `optim.impl` (auto | torch | cuda) and `model.grad_accum_fusion`
(auto | on | off | torch | cuda). One log line each says what was chosen and why.

`auto` picks the CUDA kernels only on a build whose checks have passed on this kind of GPU: a record in the
user's cache directory (`record.py`, written by `megacrystal doctor --verify`) for this library's build id
(a hash of kernels/cuda/) and this device's compute capability. Otherwise the torch paths run.

Gradient-accumulation fusion: `on` uses the CUDA library's cuBLASLt GEMM when it loads, else torch's
mixed-dtype `addmm(..., out_dtype=float32)` on CUDA; `torch` / `cuda` force one; `off` keeps the plain
bf16 weight gradient + add into main_grad. Fusion matters only for bf16 parameters (fp32 parameters
already accumulate in place into main_grad).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..log import say_once
from . import cuda_kernels
from .record import record_path, verified

OPTIM_IMPLS = ("auto", "torch", "cuda")
FUSION_MODES = ("auto", "on", "off", "torch", "cuda")


def addmm_out_dtype_ok(version: str | None = None) -> bool:
    """Does this torch have `torch.addmm(..., out_dtype=)` (the mixed-dtype GEMM, torch >= 2.8)?"""
    from torch.torch_version import TorchVersion

    return TorchVersion(version or torch.__version__) >= (2, 8)


def capability(device: torch.device) -> str | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def auto_reason(device: torch.device, record_dir: Path | None = None) -> tuple[bool, str]:
    """(use CUDA, why) for `auto`; `record_dir`: the directory of the records (default: the user's cache)."""
    if device.type != "cuda":
        return False, f"the device is {device.type}"
    lib = cuda_kernels.library(quiet=True)
    if lib is None:
        return False, f"the CUDA kernels are {cuda_kernels.why_missing()}"
    cap = capability(device)
    if verified(lib.build_id, cap, record_dir) is None:
        where = record_path(lib.build_id, cap, record_dir)
        return False, f"build {lib.build_id} has no passed check on sm {cap} ({where}; megacrystal doctor --verify)"
    return True, f"build {lib.build_id} passed its checks on sm {cap} (megacrystal doctor --verify)"


def resolve_optim_impl(
    impl: str, device: torch.device, record_dir: Path | None = None, dtype: torch.dtype | None = None
) -> str:
    """'torch' or 'cuda' for `optim.impl`; raises with one line when `cuda` cannot run here. The fused
    kernel keeps fp32 state: fp64 parameters take the torch path (config validation refuses `cuda`)."""
    if impl not in OPTIM_IMPLS:
        raise ValueError(f"optim.impl: expected one of {list(OPTIM_IMPLS)}, got {impl!r}")
    if impl == "torch":
        which, why = "torch", "optim.impl=torch"
    elif dtype == torch.float64:
        if impl == "cuda":
            raise RuntimeError("optim.impl=cuda: the fused CUDA AdamW keeps fp32 state; fp64 parameters need torch")
        which, why = "torch", "auto: fp64 parameters (the fused CUDA AdamW keeps fp32 state)"
    elif impl == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"optim.impl=cuda: needs a CUDA device, this run is on {device.type}")
        if cuda_kernels.library(quiet=True) is None:
            raise RuntimeError(f"optim.impl=cuda: the CUDA kernels are {cuda_kernels.why_missing()}")
        which, why = "cuda", "optim.impl=cuda"
    else:
        use, why = auto_reason(device, record_dir)
        which, why = ("cuda" if use else "torch"), f"auto: {why}"
    say_once(
        f"optim-impl-{which}",
        f"optimizer step: {'fused CUDA AdamW' if which == 'cuda' else 'torch foreach AdamW'} ({why})",
    )
    return which


def resolve_grad_accum_fusion(
    mode: str, device: torch.device, dtype: torch.dtype, record_dir: Path | None = None
) -> str:
    """'off', 'torch' or 'cuda' for `model.grad_accum_fusion`."""
    if mode not in FUSION_MODES:
        raise ValueError(f"model.grad_accum_fusion: expected one of {list(FUSION_MODES)}, got {mode!r}")
    if mode == "off":
        which, why = "off", "model.grad_accum_fusion=off"
    elif dtype != torch.bfloat16:
        if mode not in ("auto", "on"):
            raise RuntimeError(f"model.grad_accum_fusion={mode}: needs bf16 parameters (train.precision=bf16)")
        which, why = "off", f"{dtype} parameters accumulate into main_grad in place already"
    elif mode == "auto":
        use, why = auto_reason(device, record_dir)
        which, why = ("cuda" if use else "off"), f"auto: {why}"
    else:
        if device.type != "cuda":
            raise RuntimeError(f"model.grad_accum_fusion={mode}: needs a CUDA device, this run is on {device.type}")
        lib = cuda_kernels.library(quiet=True)
        if mode == "cuda" and lib is None:
            raise RuntimeError(f"model.grad_accum_fusion=cuda: the CUDA kernels are {cuda_kernels.why_missing()}")
        which = "cuda" if (mode == "cuda" or lib is not None) else "torch"
        why = f"model.grad_accum_fusion={mode}"
        if which == "torch" and not addmm_out_dtype_ok():
            if mode == "torch":
                raise RuntimeError(
                    f"model.grad_accum_fusion=torch: needs torch >= 2.8 (addmm out_dtype), this is {torch.__version__}"
                )
            which, why = "off", f"{why}: no CUDA kernels and torch {torch.__version__} < 2.8 has no addmm out_dtype"
    text = {
        "off": "off (bf16 weight gradient, then added to main_grad)",
        "torch": "torch addmm(out_dtype=fp32) into main_grad",
        "cuda": "cuBLASLt GEMM into main_grad",
    }
    say_once(f"wgrad-fusion-{which}", f"gradient-accumulation fusion: {text[which]} ({why})")
    return which
