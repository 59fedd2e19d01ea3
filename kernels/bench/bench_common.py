"""Timing, machine facts, the copy-bandwidth anchor, and the results table for the kernel benchmarks."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def on_gpu() -> bool:
    return torch.cuda.is_available()


def bench_ms(fn: Callable[[], object], grad_to_none=None, quick: bool = False) -> float:
    """Median milliseconds per call. GPU: triton.testing.do_bench (L2 flushed between calls);
    CPU: a plain timer over a few calls."""
    if on_gpu():
        import triton.testing

        return float(
            triton.testing.do_bench(
                fn, warmup=10 if quick else 25, rep=30 if quick else 60, grad_to_none=grad_to_none, return_mode="median"
            )
        )
    fn()
    times = []
    for _ in range(3 if quick else 7):
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def copy_bandwidth_gbps(quick: bool = False) -> float:
    """Device-to-device copy of a large buffer: (read + write bytes) / time."""
    n = (1 << 30 if on_gpu() else 1 << 26) // (4 if quick else 1) // 2  # bf16 elements
    dev = "cuda" if on_gpu() else "cpu"
    src = torch.empty(n, dtype=torch.bfloat16, device=dev).normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), quick=quick)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def machine() -> dict:
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": __import__("os").cpu_count(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if on_gpu():
        p = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(0),
            cuda=torch.version.cuda,
            sm_count=p.multi_processor_count,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
        )
    else:
        info["device"] = "cpu"
    for name in ("flash_attn", "flash_attn_interface", "liger_kernel", "apex"):
        try:
            mod = __import__(name)
            info[name] = getattr(mod, "__version__", "installed")
        except Exception:
            info[name] = None
    return info


def table(rows: list[dict]) -> str:
    cols = ["op", "case", "dtype", "mode", "provider", "ms", "GB/s", "%copy", "TFLOP/s", "note"]
    lines = []
    for r in rows:
        lines.append(
            [
                str(r.get("op", "")),
                str(r.get("case", "")),
                str(r.get("dtype", "")),
                str(r.get("mode", "")),
                str(r.get("provider", "")),
                f"{r['ms']:.3f}" if r.get("ms") is not None else "-",
                f"{r['GBps']:.0f}" if r.get("GBps") is not None else "-",
                f"{r['pct_copy']:.0f}%" if r.get("pct_copy") is not None else "-",
                f"{r['TFLOPs']:.3g}" if r.get("TFLOPs") is not None else "-",
                (r.get("error") or r.get("skipped") or "")[:60],
            ]
        )
    widths = [max(len(c), *(len(l[i]) for l in lines)) if lines else len(c) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    out += ["  ".join(v.ljust(w) for v, w in zip(l, widths, strict=True)) for l in lines]
    return "\n".join(out)


def write_json(out_dir: Path, payload: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = payload["machine"].get("device", "cpu").replace(" ", "_").replace("/", "_")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"kernels-{dev}-{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path
