"""Run metrics: `metrics.jsonl` (one JSON object per logged step) + TensorBoard event files, and MFU.

MFU counts model FLOPs per token as 6·N (N = non-embedding parameters + the output head) plus
attention 12·layers·hidden·seq (causal: half of 12·L·h·s is skipped by the kernels, but the common
convention — PaLM, Megatron — counts it whole), over the device's peak dense rate.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..config import ModelConfig
from ..log import get_logger

# Dense bf16 peak (FLOP/s) per device, from vendor datasheets.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    h, L, f, v = cfg.hidden_size, cfg.num_layers, cfg.ffn_hidden_size, cfg.vocab_size
    d = cfg.head_dim
    per_layer = h * (cfg.num_heads + 2 * cfg.num_kv_heads) * d + cfg.num_heads * d * h + 3 * h * f
    n = L * per_layer + v * h  # matmul parameters incl. the output head
    return 6.0 * n + 12.0 * L * h * seq_len


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


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in PEAK_BF16.items():
            if key in name:
                return (val if precision == "bf16" else val / 2), f"datasheet {key}"
        return 0.0, f"unknown GPU {name}"
    return measure_cpu_peak(), "measured CPU matmul"


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
            tmp = self.path.with_suffix(".jsonl.tmp")
            with open(tmp, "w") as f:
                f.write("".join(x + "\n" for x in keep))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
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
