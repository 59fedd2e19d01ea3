"""Kernel microbenchmarks: every op, forward and forward+backward, against torch eager, torch.compile,
Liger-Kernel and apex when installed, with the device's copy bandwidth measured in the same run.

    python kernels/bench/run_all.py --out benchmarks/results [--only norm,rotary] [--quick] [--no-compile]

Writes kernels-<device>-<date>.json under --out and prints a table. On a GPU the whole run is sized to
fit in ~4 minutes (a --budget-s guard skips what would not fit); on CPU it runs the reference paths at
small shapes (a smoke test: CPU figures say nothing about the GPU kernels).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cases
import torch
from bench_common import bench_ms, copy_bandwidth_gbps, machine, on_gpu, table, write_json


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def measure(case, provider: str, fn, mode: str, quick: bool) -> dict:
    args = case.make(mode == "fwd+bwd")
    if mode == "fwd":

        def run():
            with torch.no_grad():
                return fn(*args)

        ms = bench_ms(run, quick=quick)
    else:
        outs = _tuple(fn(*args))
        grads = [torch.rand_like(o) if o.dim() == 0 or o.dtype == torch.float32 else torch.randn_like(o) for o in outs]
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        ms = bench_ms(lambda: torch.autograd.backward(_tuple(fn(*args)), grads), grad_to_none=leaves, quick=quick)
    return {"ms": ms}


def run(
    only: list[str], quick: bool = False, no_compile: bool = False, budget_s: float = 220.0, log=print
) -> tuple[dict, float, list[dict]]:
    """Measure every case of the ops in `only` (all when empty) -> (machine, copy GB/s, result rows)."""
    start = time.monotonic()
    gpu = on_gpu()
    dev = "cuda" if gpu else "cpu"
    info = machine()
    copy = copy_bandwidth_gbps(quick)
    log(f"device: {info['device']}  copy bandwidth: {copy:.0f} GB/s  torch {info['torch']}  triton {info['triton']}")
    rows = []
    for op, make_cases in bench_cases.ALL.items():
        if only and op not in only:
            continue
        for case in make_cases(gpu, dev, gpu and not no_compile):
            for mode in ("fwd", "fwd+bwd"):
                for provider, fn in case.providers.items():
                    row = {
                        "op": case.op,
                        "case": case.name,
                        "dtype": str(case.dtype).replace("torch.", ""),
                        "mode": mode,
                        "provider": provider,
                    }
                    elapsed = time.monotonic() - start
                    if elapsed > budget_s or ("compile" in provider and elapsed > 0.7 * budget_s):
                        row["skipped"] = f"time budget ({elapsed:.0f}s)"
                        rows.append(row)
                        continue
                    try:
                        row.update(measure(case, provider, fn, mode, quick))
                    except Exception as e:  # one failing baseline must not end the run
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    if row.get("ms") and case.bytes.get(mode):
                        row["GBps"] = case.bytes[mode] / (row["ms"] * 1e-3) / 1e9
                        row["pct_copy"] = 100.0 * row["GBps"] / copy
                    if row.get("ms") and case.flops.get(mode):
                        row["TFLOPs"] = case.flops[mode] / (row["ms"] * 1e-3) / 1e12
                    rows.append(row)
                    if gpu:
                        torch.cuda.empty_cache()
    return info, copy, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for the JSON results")
    ap.add_argument("--only", default="", help=f"comma list of {sorted(bench_cases.ALL)}")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    ap.add_argument("--budget-s", type=float, default=220.0, help="skip what starts after this many seconds")
    a = ap.parse_args(argv)
    start = time.monotonic()
    only = [s for s in a.only.split(",") if s]
    unknown = [s for s in only if s not in bench_cases.ALL]
    if unknown:
        print(f"run_all: --only: unknown op(s) {unknown}; expected {sorted(bench_cases.ALL)}", file=sys.stderr)
        return 2
    info, copy, rows = run(only, a.quick, a.no_compile, a.budget_s)
    print(table(rows))
    payload = {
        "machine": info,
        "copy_bandwidth_GBps": copy,
        "wall_s": round(time.monotonic() - start, 1),
        "note": "GB/s counts the bytes an ideal kernel moves; %copy is against the copy measured in this run",
        "results": rows,
    }
    path = write_json(Path(a.out), payload)
    print(f"wrote {path}  ({payload['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
