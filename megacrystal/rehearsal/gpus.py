"""The GPUs a rehearsal checks memory against: device memory as CUDA reports it, and what a run can use.

`usable` leaves `RESERVED` for what the rehearsal does not see: the CUDA context and cuBLAS
workspaces (about 0.5-1 GiB) and NCCL's communication buffers (about 1 GiB at these scales), and
`FRAGMENTATION` of the rest for the caching allocator's rounding and fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 2**30
RESERVED = 2 * GiB
FRAGMENTATION = 0.05


@dataclass(frozen=True)
class GPU:
    name: str
    capacity: int  # bytes, torch.cuda.get_device_properties().total_memory (rounded)
    peak_bf16_flops: float

    @property
    def usable(self) -> int:
        return int((self.capacity - RESERVED) * (1 - FRAGMENTATION))


GPUS = {
    "h100": GPU("NVIDIA H100 80GB HBM3", int(79.1 * GiB), 989e12),
    "h200": GPU("NVIDIA H200", int(139.8 * GiB), 989e12),
    "b200": GPU("NVIDIA B200", int(178.4 * GiB), 2250e12),
    "a100": GPU("NVIDIA A100-SXM4-80GB", int(79.1 * GiB), 312e12),
}
