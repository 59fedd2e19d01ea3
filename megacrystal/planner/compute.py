"""Device time of the operations in a cost record, from their FLOPs and bytes and the hardware's
performance table: GEMMs at the large-GEMM efficiency less tile, wave and short-K losses (roofline-
capped by their memory traffic), fused attention at its backend's measured fraction of peak, and
memory-bound kernels at a fraction of HBM bandwidth, or at the device's rate of transcendental
evaluations where those bind (a CPU's exp/log in softmax and SiLU; never a GPU's). Each kernel adds the device's launch gap; on a
device that runs its own host code (CPU) the host time per op adds too, on a GPU the host queues
ahead and only shows where it is longer than the device work (`host_bound`)."""

from __future__ import annotations

import math
from functools import lru_cache

from .costs import LayerCost, Op
from .hardware import Hardware

# Smaller tiles cuBLAS falls back to for small problems, with their per-tile efficiency.
TILE_CHOICES = ((1.0, 1.0, 1.0), (0.5, 1.0, 0.92), (0.5, 0.5, 0.8))


def gemm_efficiency(hw: Hardware, m: int, n: int, k: int, batch: int = 1) -> float:
    """Fraction of peak one GEMM reaches: the best tile choice's quantisation x wave quantisation x
    K/(K + k_half), times the large-GEMM efficiency."""
    eff = hw.gemm_eff * _shape_eff(hw.gemm_tile, hw.sms, m, n, batch) * k / (k + hw.gemm_k_half)
    return eff * n / (n + hw.gemm_n_half) if hw.gemm_n_half else eff


@lru_cache(maxsize=65536)
def _shape_eff(tile0: tuple, sms: int, m: int, n: int, batch: int) -> float:
    best = 0.0
    for fm, fn, q in TILE_CHOICES:
        tm, tn = max(1, int(tile0[0] * fm)), max(1, int(tile0[1] * fn))
        gm, gn = math.ceil(m / tm), math.ceil(n / tn)
        tile = (m * n) / (gm * tm * gn * tn)
        tiles = gm * gn * batch
        waves = math.ceil(tiles / sms)
        best = max(best, q * tile * tiles / (waves * sms))
    return best


def op_time(op: Op, hw: Hardware, precision: str, attention: str = "flash") -> float:
    peak = hw.peak_flops(precision)
    mem = max(op.nbytes / (hw.hbm_bw * hw.mem_eff), op.special / hw.special_rate)
    if op.cls == "gemm":
        m, n, k, batch = op.gemm
        return max(op.flops / (peak * gemm_efficiency(hw, m, n, k, batch)), mem) + hw.launch_s
    if op.cls == "attention":
        eff = hw.attn_eff.get(attention) or hw.attn_eff.get("flash") or hw.gemm_eff * 0.5
        return max(op.flops / (peak * eff), mem) + hw.launch_s
    return mem + hw.launch_s


def phase_times(cost: LayerCost, hw: Hardware, precision: str, attention: str = "flash") -> dict:
    """{phase: {op class: seconds}} of one record's operations (host time under its own key)."""
    out: dict = {}
    # host dispatch: per op the record lists, or the measured count spread over the phases as they are
    per_op = hw.host_s_per_op * (cost.host_ops / len(cost.ops) if cost.host_ops and cost.ops else 1.0)
    for op in cost.ops:
        d = out.setdefault(op.phase, {})
        d[op.cls] = d.get(op.cls, 0.0) + op_time(op, hw, precision, attention)
        d["host"] = d.get("host", 0.0) + per_op
    return out


def device_time(by_class: dict, hw: Hardware) -> float:
    """Compute time of one phase: device work, plus host time where the host runs it (CPU), or the
    host time where it is longer than the device work it queues (GPU)."""
    dev = sum(v for k, v in by_class.items() if k != "host")
    host = by_class.get("host", 0.0)
    return dev + host if not hw.async_launch else max(dev, host)


def op_named(cost: LayerCost, name: str, phase: str, hw: Hardware, precision: str) -> float:
    return sum(op_time(o, hw, precision) for o in cost.ops if o.name == name and o.phase == phase)
