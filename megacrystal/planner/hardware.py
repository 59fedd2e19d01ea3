"""One accelerator (and its node and network) as the planner sees it: peak rates, memory, the
efficiencies its kernels reach, and the links between devices. Built from an entry of
the project's one hardware table (`megacrystal/hardware_table.py`, `--gpu h100`) or from a user's YAML/JSON file (`--hardware FILE`, same keys;
efficiencies left out fall back to a plain roofline: the defaults below, reported as such)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import hardware_table
from ..config import ConfigError
from ..hardware_table import TABLE

REQUIRED = ("memory_gb", "peak_tflops", "hbm_gb_s")  # memory_gib (as CUDA reports it) may stand for memory_gb
# Roofline fallback for anything a file leaves out (named in `Hardware.defaulted`).
DEFAULTS = dict(
    name="user hardware",
    sms=100,
    gemm_tile=[128, 128],
    gemm_efficiency=0.75,
    gemm_k_half=128,
    gemm_n_half=0,
    special_gelem_s=10000.0,
    memory_efficiency=0.8,
    attention_efficiency=dict(flash=0.4, sdpa=0.4),
    nvlink_gb_s=None,  # None: no fast intra-node link (the network is used between all devices)
    nvlink_efficiency=0.8,
    nvlink_latency_us=1.0,
    network_gb_s=25.0,
    network_efficiency=0.9,
    network_latency_us=5.0,
    gpus_per_node=8,
    launch_us=0.0,
    host_us_per_op=0.0,
    async_launch=True,
    step_overhead_us=0.0,
    memory_reserve_gb=2 * hardware_table.GiB / 1e9,  # 2 GiB: CUDA context, cuBLAS workspaces, NCCL buffers
    memory_fragmentation=hardware_table.FRAGMENTATION,
    sources={},
)
KEYS = set(REQUIRED) | set(DEFAULTS) | {"memory_gib", "memory_reserve_gib", "device_names"}


@dataclass(frozen=True)
class Hardware:
    key: str
    name: str
    memory_bytes: float
    peak: dict  # precision -> dense matmul FLOP/s
    hbm_bw: float  # bytes/s
    sms: int
    gemm_tile: tuple
    gemm_eff: float  # large GEMMs: fraction of peak before tile/wave/K losses
    gemm_k_half: float  # K at which prologue/epilogue halve a GEMM's rate: k / (k + k_half)
    gemm_n_half: float  # likewise for a narrow N (a CPU's packing); 0 on GPUs (tiles cover it)
    special_rate: float  # transcendental evaluations per second (exp, log, tanh)
    mem_eff: float  # memory-bound kernels: fraction of hbm_bw
    attn_eff: dict  # fused attention backend -> fraction of peak (fwd+bwd, causal-half FLOPs)
    intra_bw: float | None  # bytes/s per device per direction inside a node (None: use the network)
    intra_eff: float
    intra_lat: float  # s per ring step
    inter_bw: float  # bytes/s per device per direction across nodes
    inter_eff: float
    inter_lat: float
    gpus_per_node: int
    launch_s: float  # device-side gap per kernel
    host_s_per_op: float  # host time per op (dispatch); on a synchronous device it adds to compute
    async_launch: bool  # the host queues work ahead of the device (GPU) or runs it itself (CPU)
    step_overhead_s: float
    reserve_bytes: float  # runtime memory not available to tensors
    usable: float  # (memory - reserve) x (1 - fragmentation): hardware_table.usable_bytes
    sources: dict = field(default_factory=dict)
    defaulted: tuple = ()  # keys taken from the roofline fallback

    def peak_flops(self, precision: str) -> float:
        p = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "fp64": "fp64"}.get(precision, precision)
        return self.peak.get(p) or self.peak.get("bf16")

    @property
    def usable_bytes(self) -> float:
        return self.usable


def _num(where: str, key: str, v, positive: bool = True, allow_none: bool = False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise ConfigError(f"{where}: {key}: expected a positive number, got {v!r}")
    return float(v)


def _frac(where: str, key: str, v) -> float:
    x = _num(where, key, v)
    if x > 1.0:
        raise ConfigError(f"{where}: {key}: expected a fraction in (0, 1], got {v!r}")
    return x


def from_entry(key: str, entry: dict, where: str) -> Hardware:
    """Check an entry (one line per error, naming `where` and the key) and build the Hardware."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping of hardware fields, got {type(entry).__name__}")
    unknown = sorted(set(entry) - KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(KEYS))})")
    for k in REQUIRED:
        if k not in entry and not (k == "memory_gb" and "memory_gib" in entry):
            raise ConfigError(f"{where}: missing field {k!r} (required: {', '.join(REQUIRED)})")
    e = dict(DEFAULTS)
    e.update(entry)
    user = where.startswith("--hardware")
    defaulted = tuple(sorted(k for k in DEFAULTS if k not in entry and k not in ("name", "sources"))) if user else ()
    for k in ("memory_gb", "memory_gib", "memory_reserve_gb", "memory_reserve_gib"):
        if e.get(k) is not None:
            _num(where, k, e[k], positive=not k.startswith("memory_reserve"))
    if "memory_fragmentation" in entry and entry["memory_fragmentation"] != 0:
        _frac(where, "memory_fragmentation", entry["memory_fragmentation"])
    peak = e["peak_tflops"]
    if not isinstance(peak, dict):
        peak = {"bf16": peak, "fp16": peak, "fp32": peak, "fp64": peak}
    peaks = {p: _num(where, f"peak_tflops.{p}", v) * 1e12 for p, v in peak.items()}
    attn = e["attention_efficiency"]
    if not isinstance(attn, dict):
        raise ConfigError(f"{where}: attention_efficiency: expected a mapping backend -> fraction, got {attn!r}")
    tile = e["gemm_tile"]
    if not (isinstance(tile, (list, tuple)) and len(tile) == 2 and all(isinstance(t, int) and t > 0 for t in tile)):
        raise ConfigError(f"{where}: gemm_tile: expected two positive integers, got {tile!r}")
    for k in ("async_launch",):
        if not isinstance(e[k], bool):
            raise ConfigError(f"{where}: {k}: expected true or false, got {e[k]!r}")
    gpn = e["gpus_per_node"]
    if isinstance(gpn, bool) or not isinstance(gpn, int) or gpn < 1:
        raise ConfigError(f"{where}: gpus_per_node: expected a positive integer, got {gpn!r}")
    nv = _num(where, "nvlink_gb_s", e["nvlink_gb_s"], allow_none=True)
    return Hardware(
        key=key,
        name=str(e["name"]),
        memory_bytes=float(hardware_table.capacity_bytes(e)),
        peak=peaks,
        hbm_bw=_num(where, "hbm_gb_s", e["hbm_gb_s"]) * 1e9,
        sms=int(_num(where, "sms", e["sms"])),
        gemm_tile=tuple(tile),
        gemm_eff=_frac(where, "gemm_efficiency", e["gemm_efficiency"]),
        gemm_k_half=_num(where, "gemm_k_half", e["gemm_k_half"]),
        gemm_n_half=_num(where, "gemm_n_half", e["gemm_n_half"], positive=False),
        special_rate=_num(where, "special_gelem_s", e["special_gelem_s"]) * 1e9,
        mem_eff=_frac(where, "memory_efficiency", e["memory_efficiency"]),
        attn_eff={b: _frac(where, f"attention_efficiency.{b}", v) for b, v in attn.items()},
        intra_bw=None if nv is None else nv * 1e9,
        intra_eff=_frac(where, "nvlink_efficiency", e["nvlink_efficiency"]),
        intra_lat=_num(where, "nvlink_latency_us", e["nvlink_latency_us"]) * 1e-6,
        inter_bw=_num(where, "network_gb_s", e["network_gb_s"]) * 1e9,
        inter_eff=_frac(where, "network_efficiency", e["network_efficiency"]),
        inter_lat=_num(where, "network_latency_us", e["network_latency_us"]) * 1e-6,
        gpus_per_node=gpn,
        launch_s=_num(where, "launch_us", e["launch_us"], positive=False) * 1e-6,
        host_s_per_op=_num(where, "host_us_per_op", e["host_us_per_op"], positive=False) * 1e-6,
        async_launch=e["async_launch"],
        step_overhead_s=_num(where, "step_overhead_us", e["step_overhead_us"], positive=False) * 1e-6,
        reserve_bytes=float(hardware_table.reserve_bytes(e)),
        usable=float(hardware_table.usable_bytes(e)),
        sources=dict(e.get("sources") or {}),
        defaulted=defaulted,
    )


def names() -> list[str]:
    return sorted(TABLE)


def get(name: str) -> Hardware:
    if name not in TABLE:
        raise ConfigError(f"--gpu: expected one of {names()}, got {name!r}")
    return from_entry(name, TABLE[name], f"hardware table entry {name!r}")


def load_file(path: str) -> Hardware:
    """A user's hardware file: YAML or JSON, one mapping of the table's keys."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--hardware {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (ValueError, Exception) as e:  # yaml.YAMLError is an Exception
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--hardware {path}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {first}") from e
    return from_entry(p.stem, data, f"--hardware {path}")


def with_nodes_of(hw: Hardware, gpus_per_node: int | None) -> Hardware:
    if not gpus_per_node:
        return hw
    if gpus_per_node < 1:
        raise ConfigError(f"--nodes-of: expected a positive integer, got {gpus_per_node}")
    from dataclasses import replace

    return replace(hw, gpus_per_node=gpus_per_node)
