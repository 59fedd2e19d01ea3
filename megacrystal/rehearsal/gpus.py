"""The GPUs a rehearsal checks memory against, from the project's one hardware table
(`megacrystal/hardware_table.py`): device memory as CUDA reports it, and what a run can use.

`usable` leaves the table's reserve for what the rehearsal does not see (the CUDA context and cuBLAS
workspaces, about 0.5-1 GiB, and NCCL's communication buffers, about 1 GiB at these scales: 2 GiB) and
its fragmentation share of the rest (5%, the caching allocator's rounding and fragmentation); the
planner's "fits" uses the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..hardware_table import GPU_KEYS, TABLE, GiB, capacity_bytes, peak_flops, usable_bytes

__all__ = ["GPU", "GPUS", "GiB", "gpu"]


@dataclass(frozen=True)
class GPU:
    name: str
    capacity: int  # bytes, torch.cuda.get_device_properties().total_memory (where the table knows it)
    usable: int  # bytes a run's tensors can use
    peak_bf16_flops: float


def gpu(key: str) -> GPU:
    e = TABLE[key]
    return GPU(
        e["name"],
        capacity_bytes(e),
        usable_bytes(e),
        peak_flops(key, "bf16") or 0.0,
    )


GPUS = {k: gpu(k) for k in GPU_KEYS}
