"""Run metrics: `metrics.jsonl` (one JSON object per logged step) + TensorBoard event files, and MFU.

MFU counts model FLOPs per token as 6·N (N = non-embedding parameters + the output head) plus
attention 12·layers·hidden·seq (causal: half of 12·L·h·s is skipped by the kernels, but the common
convention — PaLM, Megatron — counts it whole), over the peak dense rate of what runs: bf16, fp64, or
for fp32 the TF32 peak when torch lets fp32 matmuls use TF32 and the plain fp32 peak when not.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..atomic_io import atomic_write
from ..hardware_table import TABLE, match_device
from ..hardware_table import peak_flops as table_peak
from ..log import get_logger
from ..model.flops import flops_per_token

__all__ = ["MetricsWriter", "flops_per_token", "gpu_peak", "measure_cpu_peak", "peak_flops", "tf32_matmuls"]
CPU_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


def measure_cpu_peak(dtype=torch.float32, n: int = 1024, reps: int = 3, trials: int = 3) -> float:
    """The best matmul rate of a few trials on this CPU: the MFU denominator where no datasheet figure
    applies (a CPU's real peak is higher; CPU MFU figures only compare runs on the same machine)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def tf32_matmuls() -> tuple[bool, str]:
    """Whether CUDA fp32 matmuls run on TF32 here, and what says so."""
    if os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE") == "1":
        return True, "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1"
    mode = torch.get_float32_matmul_precision()
    return mode != "highest", f"torch float32 matmul precision '{mode}'"


def gpu_peak(name: str, precision: str, tf32: bool) -> tuple[float, str]:
    """(peak FLOP/s of what runs, which figure) for a GPU named `name`, from the project's hardware table
    (`megacrystal/hardware_table.py`, the planner's too); 0 where the table has none."""
    key = match_device(name)
    if key is None:
        return 0.0, f"unknown GPU {name}"
    which, field = {
        "bf16": ("bf16", "bf16"),
        "fp64": ("fp64", "fp64"),
        "fp32": ("TF32", "tf32") if tf32 else ("fp32", "fp32"),
    }[precision]
    val = table_peak(key, field)
    label = max((n for n in TABLE[key]["device_names"] if n in name), key=len)
    return (val or 0.0), f"datasheet {label} {which}" + ("" if val else " (not in the table)")


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """The MFU denominator for a run in `precision` on `device`, and a line saying which it is (on a GPU
    in fp32 also whether TF32 is on)."""
    if device.type == "cuda":
        tf32, why = tf32_matmuls()
        peak, src = gpu_peak(torch.cuda.get_device_name(device), precision, tf32)
        if precision == "fp32":
            hint = (
                ""
                if tf32
                else "; torch.set_float32_matmul_precision('high') or TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 turns it on"
            )
            src += f"; fp32 matmuls: TF32 {'on' if tf32 else 'off'} ({why}{hint})"
        return peak, src
    return measure_cpu_peak(CPU_DTYPES[precision]), f"measured CPU {precision} matmul"


class MetricsWriter:
    """Appends to `out_dir/metrics.jsonl` and `out_dir/tensorboard/` (rank 0 only)."""

    def __init__(self, out_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            except ImportError as e:
                get_logger().warning(f"tensorboard not available ({e}); writing metrics.jsonl only")

    def truncate_after(self, step: int) -> None:
        """On resume at `step`: lines of later steps (the run after that checkpoint, now replayed) move
        to `metrics.superseded.jsonl` (appended, never lost), so metrics.jsonl stays one line per step."""
        if not self.enabled or not self.path.exists():
            return
        self._f.close()
        keep, later = [], []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                later.append(line)  # a torn last line of a killed run: kept aside as well
                continue
            (keep if rec.get("step", 0) <= step else later).append(line)
        if later:
            side = self.path.with_name("metrics.superseded.jsonl")
            with open(side, "a") as f:
                f.write(json.dumps({"superseded_by_resume_at_step": step, "time": time.time()}) + "\n")
                f.write("".join(x + "\n" for x in later))
                f.flush()
                os.fsync(f.fileno())
            atomic_write(self.path, "".join(x + "\n" for x in keep))
        self._f = open(self.path, "a", buffering=1)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record["step"]
            for k, v in record.items():
                if k == "step":
                    continue
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        if isinstance(vv, (int, float)):
                            self._tb.add_scalar(f"{k}/{kk}", vv, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._f.close()
        if self._tb is not None:
            self._tb.close()
