"""End-to-end training throughput on one device: the real engine step (forward, backward, optimizer)
on synthetic token batches, reported as tokens/s and MFU (model FLOPs / peak dense bf16 rate).

    python benchmarks/train_throughput.py --out benchmarks/results [--cases crystal-1b,crystal-7b-4l] [--steps 6]

Cases: crystal-1b (the whole 1.3 B model) and crystal-7b-4l (4 layers of the 7B shape: the per-layer
rate of the 7B model on one GPU), crystal-7b-4l-selective / -full (model.recompute; peak memory is
recorded with the rate) and -compile (model.compile). On CPU it runs the tiny preset (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from megacrystal.config import load_config  # noqa: E402
from megacrystal.train.metrics import flops_per_token, peak_flops  # noqa: E402

CASES = {
    "crystal-1b": [
        "model.preset=crystal-1b",
        "data.seq_length=2048",
        "train.micro_batch_size=4",
        "train.global_batch_size=16",
    ],
    "crystal-7b-4l": [
        "model.preset=crystal-7b",
        "model.num_layers=4",
        "data.seq_length=2048",
        "train.micro_batch_size=4",
        "train.global_batch_size=16",
    ],
    # model.recompute on the 7B layer shape (issue 21): selective and full against crystal-7b-4l (none)
    "crystal-7b-4l-selective": [
        "model.preset=crystal-7b",
        "model.num_layers=4",
        "model.recompute=selective",
        "data.seq_length=2048",
        "train.micro_batch_size=4",
        "train.global_batch_size=16",
    ],
    "crystal-7b-4l-full": [
        "model.preset=crystal-7b",
        "model.num_layers=4",
        "model.recompute=full",
        "data.seq_length=2048",
        "train.micro_batch_size=4",
        "train.global_batch_size=16",
    ],
    "crystal-7b-4l-compile": [
        "model.preset=crystal-7b",
        "model.num_layers=4",
        "model.compile=true",
        "data.seq_length=2048",
        "train.micro_batch_size=4",
        "train.global_batch_size=16",
    ],
    "crystal-1b-recompute": [
        "model.preset=crystal-1b",
        "model.recompute=true",
        "data.seq_length=2048",
        "train.micro_batch_size=8",
        "train.global_batch_size=32",
    ],
    "tiny": ["model.preset=tiny", "data.seq_length=128", "train.micro_batch_size=2", "train.global_batch_size=4"],
}


def machine() -> dict:
    info = dict(python=sys.version.split()[0], torch=torch.__version__, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    else:
        import platform

        info["device"] = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return info


def matmul_tflops(device, n: int = 8192, reps: int = 10) -> float:
    """The anchor: a bf16 n^3 matmul rate measured in the same run (TARGETS.md: ~790 TF/s on H100/H200)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def run_case(name: str, steps: int, warmup: int, extra: tuple = ()) -> dict:
    from megacrystal.engine.engine import Engine
    from megacrystal.parallel.init import init_distributed
    from megacrystal.parallel.state import destroy

    cuda = torch.cuda.is_available()
    overrides = CASES[name] + [f"train.precision={'bf16' if cuda else 'fp32'}"] + list(extra)
    cfg = load_config(None, overrides)
    grid, device = init_distributed(cfg)
    try:
        engine = Engine(cfg, device)
        t = cfg.train
        s, v = cfg.data.seq_length, cfg.model.vocab_size
        n_micro = t.global_batch_size // t.micro_batch_size
        g = torch.Generator().manual_seed(0)

        def batch():
            toks = torch.randint(0, v, (t.micro_batch_size, s + 1), generator=g)
            return dict(
                tokens=toks[:, :-1].contiguous(),
                labels=toks[:, 1:].contiguous(),
                loss_mask=torch.ones(t.micro_batch_size, s),
            )

        mbs = [batch() for _ in range(n_micro)]
        times, losses = [], []
        for i in range(warmup + steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = engine.train_step(mbs, 1e-4)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            losses.append(out["loss"])
        step_s = sorted(times)[len(times) // 2]
        tokens = t.global_batch_size * s
        tps = tokens / step_s
        peak, src = peak_flops(device, t.precision)
        mfu = flops_per_token(cfg.model, s) * tps / peak if peak else 0.0
        res = dict(
            case=name,
            overrides=overrides,
            params=engine.num_parameters(),
            step_s_median=step_s,
            step_s_all=times,
            tokens_per_step=tokens,
            tokens_per_s=tps,
            mfu=mfu,
            peak_flops=peak,
            peak_source=src,
            losses=losses,
        )
        if cuda:
            res["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        return res
    finally:
        del engine
        destroy()
        if cuda:
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default=None, help=f"comma list of {sorted(CASES)}")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra config override KEY=VALUE (repeatable)")
    a = ap.parse_args(argv)
    cases = (
        a.cases.split(",") if a.cases else (["crystal-1b", "crystal-7b-4l"] if torch.cuda.is_available() else ["tiny"])
    )
    results = []
    for c in cases:
        try:
            r = run_case(c, a.steps, a.warmup, tuple(a.set))
        except Exception as e:  # record and go on: one failing case must not lose the others
            r = dict(case=c, error=f"{type(e).__name__}: {e}")
        results.append(r)
        if "error" in r:
            print(f"{c:22s} ERROR {r['error']}")
        else:
            print(
                f"{c:22s} {r['params'] / 1e9:6.2f} B params  step {r['step_s_median'] * 1e3:8.1f} ms  "
                f"{r['tokens_per_s']:12,.0f} tok/s  MFU {r['mfu']:.3f}  mem {r.get('max_memory_gib', 0):.1f} GiB"
            )
    info = machine()
    if torch.cuda.is_available():
        info["matmul_bf16_tflops"] = matmul_tflops(torch.device("cuda"))
        for r in results:
            if "tokens_per_s" in r:
                r["model_tflops"] = r["mfu"] * r["peak_flops"] / 1e12
                r["share_of_matmul"] = r["model_tflops"] / info["matmul_bf16_tflops"]
        print(f"bf16 matmul anchor {info['matmul_bf16_tflops']:.0f} TFLOP/s")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = info["device"].split(" (")[0].replace(" ", "_")
    path = out / f"train-throughput-{dev}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(dict(machine=info, results=results), indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
