"""How much of a slow collective the step hides: ZeRO-1's parameter all-gather and the gradient
reduce-scatter, each with its overlap on and off, on 2 gloo ranks (dp=2) on the CPU.

    python benchmarks/overlap.py [--delay-ms 50] [--steps 4] [--no-record]

`collectives.inject_delay(kind, d)` makes every collective of one kind complete no earlier than d
after it is issued and d after the previous one of that kind completed (one link, which carries one
collective at a time, as a real one does): a wait that comes late enough costs nothing, a wait that
comes at once costs the whole delay. Each transformer layer costs a fixed 60 ms forward / 120 ms
backward (sleeps: `parallel_bench_util.sleep_cost`), so the compute is long enough to hide a 50 ms
delay per bucket, and the buckets are about one layer each (16 layers: 17 buckets). What no overlap
can hide is the link time before the first compute that needs a gathered bucket (the embedding's
and the first layer's buckets) and after the last gradient (the embedding's, tied to the head, and
the first layer's): about 2 of the n buckets, so hidden <= 1 - 2/n. Per case (overlap on/off):
    injected = number of collectives of the kind per step x d
    exposed  = median step time with the delay - median step time without it (same case)
    hidden   = 1 - exposed / injected
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.parallel_bench_util import record, sleep_cost, spawn, stamp

LAYERS, T_FWD, T_BWD = 16, 0.060, 0.120
MODEL = [
    "model.hidden_size=64",
    "model.num_heads=4",
    "model.ffn_hidden_size=172",
    "model.vocab_size=512",
    "model.max_seq_len=64",
    "model.mup_base_width=64",
    "data.seq_length=64",
    "train.micro_batch_size=1",
    "train.global_batch_size=2",
    "parallel.distributed_optimizer=true",
    "parallel.bucket_size_mb=0.2",  # about one layer per bucket
]
CASES = {  # kind -> the config switch that overlaps it
    "param_gather": "parallel.overlap_param_gather",
    "grad_reduce": "parallel.overlap_grad_reduce",
}


def _rank(rank, world, kind, overlap, delay_s, steps, layers=LAYERS):
    from megacrystal.config import load_config
    from megacrystal.engine.engine import Engine
    from megacrystal.parallel import collectives as C

    cfg = load_config(None, MODEL + [f"model.num_layers={layers}", f"{CASES[kind]}={str(overlap).lower()}"])
    e = Engine(cfg, torch.device("cpu"))
    sleep_cost(e.chunks, T_FWD, T_BWD)
    g = torch.Generator().manual_seed(rank)
    t = torch.randint(0, 512, (1, 65), generator=g)
    mbs = [dict(tokens=t[:, :-1], labels=t[:, 1:], loss_mask=torch.ones(1, 64))]
    issued = []
    C.observe(lambda ev, h: issued.append(1) if ev == "issue" and h.kind == kind else None)
    C.inject_delay(kind, delay_s)
    times, counts = [], []
    for step in range(steps + 1):  # step 0 warms up (and leaves the first gathers in flight)
        issued.clear()
        torch.distributed.barrier()
        t0 = time.perf_counter()
        e.train_step(mbs, 1e-3)
        if step:
            times.append(time.perf_counter() - t0)
            counts.append(len(issued))
    e.sync_params()
    C.inject_delay(kind, 0)
    C.observe(None)
    return dict(step_s=statistics.median(times), steps_s=times, per_step=counts[-1], buckets=len(e.buffers.buckets))


def measure(kind: str, overlap: bool, delay_s: float, steps: int, layers: int = LAYERS) -> dict:
    base = spawn(_rank, 2, (kind, overlap, 0.0, steps, layers))
    slow = spawn(_rank, 2, (kind, overlap, delay_s, steps, layers))
    step0 = max(r["step_s"] for r in base)
    step1 = max(r["step_s"] for r in slow)
    n = slow[0]["per_step"]
    injected = n * delay_s
    exposed = step1 - step0
    return dict(
        kind=kind,
        overlap=overlap,
        layers=layers,
        delay_s=delay_s,
        collectives_per_step=n,
        buckets=slow[0]["buckets"],
        step_s_without_delay=step0,
        step_s_with_delay=step1,
        injected_s=injected,
        exposed_s=exposed,
        hidden=1 - exposed / injected,
        steps_s=dict(without=base[0]["steps_s"], with_delay=slow[0]["steps_s"]),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay-ms", type=float, default=50.0)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--layers", type=int, default=LAYERS)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()
    rows = []
    for kind in CASES:
        for overlap in (True, False):
            r = measure(kind, overlap, args.delay_ms / 1e3, args.steps, args.layers)
            rows.append(r)
            print(
                f"{kind:12s} overlap {'on ' if overlap else 'off'}: {r['collectives_per_step']} x "
                f"{args.delay_ms:.0f} ms injected = {r['injected_s'] * 1e3:.0f} ms, exposed "
                f"{r['exposed_s'] * 1e3:.0f} ms (step {r['step_s_without_delay'] * 1e3:.0f} -> "
                f"{r['step_s_with_delay'] * 1e3:.0f} ms): hidden {r['hidden']:.1%}",
                flush=True,
            )
    if not args.no_record:
        path = record(
            f"overlap-{stamp()}",
            dict(
                description=__doc__.split("\n\n")[1].strip(),
                layer_cost_s=dict(forward=T_FWD, backward=T_BWD),
                loadavg_at_start=[round(x, 2) for x in load0],
                results=rows,
            ),
        )
        print(f"recorded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
