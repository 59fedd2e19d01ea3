"""Activation memory per rank under context parallelism, from torch.profiler's memory profile.

    python benchmarks/cp_memory.py [--seq 2048] [--cps 1,2,4] [--no-record]

One training step of the same model on the same global sequence at cp = 1, 2, 4 (cp ranks only:
tp = pp = dp = 1, gloo, CPU), after a warm-up step. `torch.profiler` (profile_memory, record_shapes,
with_stack) categorises every allocation; the figure is the peak of the bytes it files as activations
(tensors autograd keeps for the backward) during the step, on each rank. Attention runs on SDPA's CPU
flash kernel at every cp (the serial model through `F.scaled_dot_product_attention`, the ring through
its aten op), so no layout keeps a [s, s] score matrix and the activations are linear in the tokens a
rank holds. The prediction for cp ranks: a * s / cp + f, with the per-token slope a and the fixed part
f fitted from two serial runs (s and s / 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

MODEL = [
    "model.family=llama",
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "model.ffn_hidden_size=128",
    "model.vocab_size=512",
    "train.micro_batch_size=1",
    "train.global_batch_size=1",
    "model.attention_backend=sdpa",
]
ACTIVATION = 5  # export_memory_timeline's json: [times, sizes]; sizes[t] = [0, parameter, optimizer
# state, input, temporary, activation, gradient, autograd detail, unknown] bytes at time t


def activation_peak(seq: int, cp: int, rank: int = 0) -> int:
    """Peak activation bytes of this rank over one profiled training step (after a warm-up step)."""
    from torch.profiler import ProfilerActivity, profile

    from megacrystal.config import load_config
    from megacrystal.data.context_parallel import split_micro_batch
    from megacrystal.engine.engine import Engine

    cfg = load_config(None, MODEL + [f"model.max_seq_len={seq}", f"data.seq_length={seq}", f"parallel.cp={cp}"])
    engine = Engine(cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 512, (1, seq + 1), generator=g)
    batch = dict(tokens=t[:, :-1], labels=t[:, 1:], loss_mask=torch.ones(1, seq))
    mbs = [split_micro_batch(batch, engine.grid.cp_rank, cp)]
    engine.train_step(mbs, 1e-3)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        engine.train_step(mbs, 1e-3)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA snapshots; the CPU timeline stays
        path = os.path.join(tmp, f"mem{rank}.json")
        prof.export_memory_timeline(path, device="cpu")
        sizes = json.load(open(path))[1]
    return max(s[ACTIVATION] for s in sizes)


def _rank(rank: int, world: int, seq: int) -> int:
    return activation_peak(seq, world, rank)


def measure(seq: int, cps: list[int], spawn) -> dict:
    """{"fit": (slope, fixed), "cp": {cp: {"per_rank": [...], "predicted": ..., "ratio_to_cp1": ...}}}.
    `spawn(fn, world, args)` runs fn on `world` gloo ranks (benchmarks' or tests' helper)."""
    full, half = activation_peak(seq, 1), activation_peak(seq // 2, 1)
    slope = (full - half) / (seq - seq // 2)
    fixed = full - slope * seq
    out = {"seq": seq, "slope_bytes_per_token": slope, "fixed_bytes": fixed, "cp": {}}
    for cp in cps:
        per_rank = [full] if cp == 1 else spawn(_rank, cp, (seq,))
        predicted = slope * seq / cp + fixed
        out["cp"][cp] = dict(
            per_rank=per_rank,
            predicted=predicted,
            worst_vs_predicted=max(per_rank) / predicted,
            ratio_to_cp1=max(per_rank) / full,
        )
    return out


def main(argv=None) -> int:
    from benchmarks.parallel_bench_util import record, spawn

    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--cps", default="1,2,4")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = measure(args.seq, [int(c) for c in args.cps.split(",")], lambda fn, w, a: spawn(fn, w, a))
    for cp, r in res["cp"].items():
        print(
            f"cp={cp}: activation peak per rank {[round(x / 2**20, 2) for x in r['per_rank']]} MiB, "
            f"{r['ratio_to_cp1']:.3f} x cp1 (1/cp = {1 / cp:.3f}); predicted {r['predicted'] / 2**20:.2f} MiB "
            f"(measured / predicted {r['worst_vs_predicted']:.3f})"
        )
    if not args.no_record:
        print(record(f"cp-memory-cpu-seq{args.seq}", dict(model=MODEL, **res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
