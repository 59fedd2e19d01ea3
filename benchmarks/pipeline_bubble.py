"""Pipeline bubble, measured: pp=4, m=8 micro-batches, 1F1B and interleaved 1F1B (vpp=2), CPU gloo.

    python benchmarks/pipeline_bubble.py [--work sleep|model|both] [--p2p-overlap both|on|off] [--steps 3] [--no-record]

Each of 4 ranks runs `Engine.train_step` with its compute intervals traced. Per stage,
    idle = 1 - (time inside forward/backward compute) / (pipeline span)
where the span runs from the first compute on any stage to the last compute on any stage of the
step. Theory (equal stages, free transfers): (p-1)/(m+p-1) for 1F1B, (p-1)/(vpp*m+p-1) interleaved.
With every transfer taking the bare exchange's time measured in the same run, the same tables give
`latency_model` (an event simulation): what a perfect implementation would measure on this link.

--work sleep: every transformer layer costs a fixed 10 ms forward / 20 ms backward (an autograd
  function that sleeps; `--layer-ms` changes it), on top of the real tiny model. This measures the schedule itself on a
  2-core machine, where 4 ranks doing real arithmetic at once would slow each other down.
--work model: the real tiny model only; on 2 cores the 4 ranks share the CPU, so compute
  intervals stretch when neighbours are busy (reported, not comparable to the theory).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist

from benchmarks.parallel_bench_util import record, sleep_cost, spawn, stamp

PP, M, LAYERS = 4, 8, 8
T_FWD, T_BWD = 0.010, 0.020


def _rank(rank, world, vpp, work, steps, p2p_overlap=True, cost=(T_FWD, T_BWD)):
    from megacrystal.config import load_config
    from megacrystal.engine.engine import Engine
    from megacrystal.parallel.p2p import P2P

    h, s = (64, 64) if work == "sleep" else (256, 128)  # sleep: the sleeps dominate; model: the arithmetic
    cfg = load_config(
        None,
        [
            f"model.num_layers={LAYERS}",
            f"model.hidden_size={h}",
            "model.num_heads=4",
            f"model.ffn_hidden_size={4 * h}",
            "model.vocab_size=512",
            f"model.max_seq_len={s}",
            "model.mup_base_width=64",
            f"data.seq_length={s}",
            "train.micro_batch_size=1",
            f"train.global_batch_size={M}",
            f"parallel.pp={PP}",
            f"parallel.vpp={vpp}",
            f"parallel.overlap_p2p_comm={str(p2p_overlap).lower()}",
        ],
    )
    e = Engine(cfg, torch.device("cpu"))
    if work == "sleep":
        sleep_cost(e.chunks, *cost)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 512, (M, s + 1), generator=g)
    mbs = [dict(tokens=t[i : i + 1, :-1], labels=t[i : i + 1, 1:], loss_mask=torch.ones(1, s)) for i in range(M)]
    # the cost of one exchange with no compute around it: every rank sends to next, receives from prev
    ring = P2P(e.grid, (1, s, h), torch.float32, torch.device("cpu"))
    x = torch.randn(1, s, h)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(50):
        ring.send_forward(x, recv_prev=True)
    exchange_s = (time.perf_counter() - t0) / 50
    out = []
    for step in range(steps + 1):  # step 0 warms up
        e.trace = []
        dist.barrier()
        e.train_step(mbs, 1e-3)
        comp = [i for i in e.trace if i[0] in "FB"]
        comm = sum(i[4] - i[3] for i in e.trace if i[0] == "C")
        n_ex = sum(1 for i in e.trace if i[0] == "C")
        span = torch.tensor([min(i[3] for i in comp), -max(i[4] for i in comp)], dtype=torch.float64)
        dist.all_reduce(span, op=dist.ReduceOp.MIN)
        start, end = span[0].item(), -span[1].item()
        busy = sum(i[4] - i[3] for i in comp)
        if step:
            out.append(
                dict(
                    span_s=end - start,
                    busy_s=busy,
                    comm_s=comm,
                    idle=1 - busy / (end - start),
                    comm_frac=comm / (end - start),
                    n_compute=len(comp),
                    n_exchanges=n_ex,
                    exchange_s=exchange_s,
                )
            )
    e.trace = None
    return out


def latency_model(p: int, v: int, m: int, t_fwd: float, t_bwd: float, latency: float) -> float:
    """Idle fraction of the schedule's own tables (`interleaved_table`; 1F1B is its vpp=1 case) with
    fixed chunk times and every cross-stage dependency delayed by `latency` (an event simulation;
    latency 0 gives the theory). What a perfect implementation would measure on a link this slow."""
    from megacrystal.parallel.pipeline_schedules import interleaved_table

    tables = [interleaved_table(p, r, v, m) for r in range(p)]
    done, free, nxt, start = {}, [0.0] * p, [0] * p, [None] * p
    last = p * v - 1
    while any(nxt[r] < len(tables[r]) for r in range(p)):
        moved = False
        for r in range(p):
            if nxt[r] == len(tables[r]):
                continue
            e = tables[r][nxt[r]]
            vs = e.chunk * p + r
            if e.kind == "F":
                dep, lat, cost = (None, 0.0, t_fwd) if vs == 0 else (("F", e.microbatch, vs - 1), latency, t_fwd)
            else:
                dep, lat, cost = (
                    (("F", e.microbatch, vs), 0.0, t_bwd)
                    if vs == last
                    else (("B", e.microbatch, vs + 1), latency, t_bwd)
                )
            if dep is not None and dep not in done:
                continue
            t0 = max(free[r], done[dep] + lat if dep else 0.0)
            free[r] = done[(e.kind, e.microbatch, vs)] = t0 + cost
            start[r] = t0 if start[r] is None else start[r]
            nxt[r] += 1
            moved = True
        if not moved:
            raise RuntimeError("schedule tables deadlock")
    busy = m * v * (t_fwd + t_bwd)
    return 1 - busy / (max(free) - min(start))


def measure(work: str, vpp: int, steps: int, p2p_overlap: bool = True, cost=(T_FWD, T_BWD)) -> dict:
    res = spawn(_rank, PP, (vpp, work, steps, p2p_overlap, cost))
    theory = (PP - 1) / (vpp * M + PP - 1)
    bare = sum(r[0]["exchange_s"] for r in res) / PP
    per_layers = LAYERS // (PP * vpp)
    model = latency_model(PP, vpp, M, cost[0] * per_layers, cost[1] * per_layers, bare) if work == "sleep" else None
    per_stage = [sum(s["idle"] for s in r) / len(r) for r in res]
    comm = [sum(s["comm_frac"] for s in r) / len(r) for r in res]
    span = sum(s["span_s"] for s in res[0]) / len(res[0])
    return dict(
        schedule="1F1B" if vpp == 1 else f"interleaved 1F1B (vpp={vpp})",
        pp=PP,
        vpp=vpp,
        microbatches=M,
        work=work,
        layer_cost_s=dict(forward=cost[0], backward=cost[1]) if work == "sleep" else None,
        overlap_p2p_comm=p2p_overlap,
        theory_idle=theory,
        latency_model_idle=model,
        within_10pct_of_theory=all(x <= 1.1 * theory for x in per_stage),
        idle_per_stage=per_stage,
        idle_mean=sum(per_stage) / PP,
        blocked_in_p2p_per_stage=comm,
        span_s=span,
        steps=steps,
        blocking_waits_per_stage=[r[0]["n_exchanges"] for r in res],
        bare_exchange_ms=1e3 * bare,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", choices=["sleep", "model", "both"], default="both")
    ap.add_argument("--p2p-overlap", choices=["both", "on", "off"], default="both")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument(
        "--layer-ms",
        default=f"{T_FWD * 1e3:g},{T_BWD * 1e3:g}",
        help="sleep work: forward,backward ms per layer (longer: less sensitive to a loaded machine)",
    )
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    load0 = os.getloadavg()
    cost = tuple(float(x) / 1e3 for x in args.layer_ms.split(","))
    overlaps = {"both": (True, False), "on": (True,), "off": (False,)}[args.p2p_overlap]
    for work in ["sleep", "model"] if args.work == "both" else [args.work]:
        for vpp in (1, 2):
            for ov in overlaps:
                r = measure(work, vpp, args.steps, ov, cost)
                rows.append(r)
                stages = " ".join(f"{x:.3f}" for x in r["idle_per_stage"])
                waits = " ".join(f"{x:.3f}" for x in r["blocked_in_p2p_per_stage"])
                print(
                    f"{work:5s} {r['schedule']:26s} p2p overlap {'on ' if ov else 'off'} theory "
                    f"{r['theory_idle']:.3f} (with the bare exchange as latency {r['latency_model_idle'] or 0:.3f})  "
                    f"measured per stage {stages}  (mean {r['idle_mean']:.3f}; blocked "
                    f"in p2p: {waits}; span {r['span_s'] * 1e3:.0f} ms; {r['blocking_waits_per_stage'][0]} "
                    f"blocking waits on stage 0, a bare exchange {r['bare_exchange_ms']:.1f} ms)",
                    flush=True,
                )
    if not args.no_record:
        path = record(
            f"pipeline_bubble-{stamp()}",
            dict(
                loadavg_at_start=[round(x, 2) for x in load0],
                description="idle fraction per pipeline stage = 1 - compute time / span from first to last "
                "compute of the step; sleep work: 10 ms fwd / 20 ms bwd per layer, 8 layers",
                results=rows,
            ),
        )
        print(f"recorded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
