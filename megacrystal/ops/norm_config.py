"""Launch shapes of the Triton norm kernels, by hidden size and element size.

The defaults were picked from the sweep in `kernels/bench/tune_kernels.py` on an H200 (see
`docs/kernels-tuning.md`); each kernel also accepts an explicit config, which is how the sweep calls it.
"""
from __future__ import annotations

from dataclasses import dataclass

import triton


@dataclass(frozen=True)
class FwdConfig:
    rows: int = 1          # rows per program, held together in registers as [rows, next_pow2(N)]
    warps: int = 8


@dataclass(frozen=True)
class BwdConfig:
    tile: int = 1          # rows per loop step ([tile, next_pow2(N)] loaded at once)
    stages: int = 2        # software-pipelining depth of the row loop (1 = none)
    warps: int = 8
    per_sm: int = 2        # target programs per SM (each writes one fp32 partial row of dw/db)

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
    if blk <= 1024:
        return FwdConfig(rows=max(1, 2048 // blk), warps=4)
    return FwdConfig(rows=1, warps=min(16, max(4, blk // 512)))


def bwd_config(n: int, elem_bytes: int) -> BwdConfig:
    blk = triton.next_power_of_2(max(n, 1))
    if ("bwd", blk, elem_bytes) in TUNED:
        return TUNED["bwd", blk, elem_bytes]
    if blk <= 1024:
        return BwdConfig(tile=max(1, 1024 // blk), stages=2, warps=4, per_sm=4)
    return BwdConfig(tile=1, stages=2, warps=min(16, max(4, blk // 512)), per_sm=2)
