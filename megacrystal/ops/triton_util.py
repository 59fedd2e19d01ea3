"""Small helpers shared by the Triton kernels: launch sizes and the CPU/interpreter check."""

from __future__ import annotations

import os

import torch
import triton


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def on_meta(*tensors: torch.Tensor) -> bool:
    """Meta tensors (a rehearsal, `megacrystal rehearse`): the kernel is not launched; the wrappers still
    allocate the outputs and save for the backward exactly what they do on the GPU."""
    return any(t is not None and t.is_meta for t in tensors)


def check_device(*tensors: torch.Tensor) -> None:
    """Compiled Triton runs on CUDA tensors only; CPU tensors need the interpreter (TRITON_INTERPRET=1
    set before triton is imported). Meta tensors pass (nothing is launched for them)."""
    for t in tensors:
        if t.device.type not in ("cuda", "meta") and not interpreting():
            raise RuntimeError(
                f"Triton kernel called on a {t.device.type} tensor; compiled Triton needs CUDA "
                f"(on CPU set TRITON_INTERPRET=1 before importing triton, or use model.kernels=torch)"
            )


def block(n: int, cap: int = 1 << 16) -> int:
    b = triton.next_power_of_2(max(int(n), 1))
    if b > cap:
        raise ValueError(f"dimension {n} is larger than this kernel supports ({cap})")
    return b


def warps(block_elems: int) -> int:
    return min(max(block_elems // 256, 1), 16)


_SMS: dict = {}


def sm_count() -> int:
    """Multiprocessors of the current CUDA device (cached); 1 under the interpreter / without CUDA, so that
    grids sized as "a few programs per SM" stay small there."""
    if interpreting() or not torch.cuda.is_available():
        return 1
    dev = torch.cuda.current_device()
    if dev not in _SMS:
        _SMS[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
    return _SMS[dev]


def rows2d(x: torch.Tensor) -> torch.Tensor:
    """View x as [rows, last] with a unit stride on the last dim (copies only if it must)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def unit_last(t: torch.Tensor) -> torch.Tensor:
    """`t` with a unit stride on its last dim (copied only if it has not)."""
    return t if t.stride(-1) == 1 else t.contiguous()
