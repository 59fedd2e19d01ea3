"""Launch shapes of the Triton norm kernels, by hidden size.

Measured on an H200 (kernels/bench/tune_kernels.py, 2026-11-26; benchmarks/results/tune-NVIDIA_H200-*.json),
bf16, 16384 rows, hidden 2048 and 4096 -- see kernels/bench/NOTES.md. What mattered:
- forward: ~32 elements per thread (two 4096-rows per program with 8 warps; two 2048-rows with 4 warps):
  93% of copy bandwidth at 4096, 85% at 2048 (16 warps on one row: 75%).
- backward: the depth of the software pipeline of the row loop (cp.async prefetch of the next rows' x and dy):
  1 -> 54%, 2 -> 61%, 3 -> 76%, 4 -> 80% at 4096 (8 warps); 2 rows per step did not help; one partial
  dw/db row per program with 1-2 programs per SM.
Other hidden sizes use the same rules, not measured. Each kernel also accepts an explicit config (the sweep).
"""

from __future__ import annotations

from dataclasses import dataclass

import triton


@dataclass(frozen=True)
class FwdConfig:
    rows: int = 1  # rows per program, held together in registers as [rows, next_pow2(N)]
    warps: int = 8


@dataclass(frozen=True)
class BwdConfig:
    tile: int = 1  # rows per loop step ([tile, next_pow2(N)] loaded at once)
    stages: int = 4  # software-pipelining depth of the row loop (1 = none)
    warps: int = 8
    per_sm: int = 1  # target programs per SM (each writes one fp32 partial row of dw/db)

    def plan(self, rows: int, sms: int) -> tuple[int, int]:
        """-> (tile, iters): rows per program = tile * iters, a power of two, chosen so that there are
        between per_sm*sms and 2*per_sm*sms programs (fewer when there are few rows)."""
        tile = min(self.tile, triton.next_power_of_2(max(rows, 1)))
        per_prog = max(1, rows // max(1, self.per_sm * sms))
        iters = max(1, _prev_pow2(per_prog) // tile)
        return tile, iters


def _prev_pow2(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


# (pass, next_pow2(N), element bytes) -> config; filled by the tuner for the run that follows its sweep
TUNED: dict = {}


def fwd_config(n: int, elem_bytes: int) -> FwdConfig:
    blk = triton.next_power_of_2(max(n, 1))
    if ("fwd", blk, elem_bytes) in TUNED:
        return TUNED["fwd", blk, elem_bytes]
    warps = 4 if blk <= 2048 else 8 if blk <= 4096 else 16
    return FwdConfig(rows=max(1, min(32, 32 * 32 * warps // blk)), warps=warps)


def bwd_config(n: int, elem_bytes: int) -> BwdConfig:
    blk = triton.next_power_of_2(max(n, 1))
    if ("bwd", blk, elem_bytes) in TUNED:
        return TUNED["bwd", blk, elem_bytes]
    if blk <= 1024:
        return BwdConfig(tile=max(1, 1024 // blk), stages=3, warps=4, per_sm=2)
    if blk <= 2048:
        return BwdConfig(tile=1, stages=3, warps=8, per_sm=2)
    return BwdConfig(tile=1, stages=4, warps=8 if blk <= 4096 else 16, per_sm=1)
