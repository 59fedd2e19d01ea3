"""Where a 2-rank gloo step of the demo spends its CPU time: ops, collectives, the rest.

    python benchmarks/planner_cpu_profile.py [--steps 30] [--cases 1rank,dp2,tp2,pp2] [--out FILE]

Each case runs the engine's own `train_step` of examples/demo.yaml's model and batch shape (synthetic
tokens: the same arithmetic) in 1 or 2 processes (gloo, one thread each, as torchrun gives them). Per
rank it measures, after a warm-up: the process CPU time per step (all threads: gloo's included), the
main thread's CPU time, the CPU time spent inside collective calls and waits (the wrapped
torch.distributed functions), the number of collectives, and the number of ops one step dispatches (a
counting dispatch mode over one separate step, the rehearsal's count). And a probe of the same
collectives in a loop between two processes, with a matmul between calls so the ranks do not run in
lock-step. Writes JSON (load average before and after: the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CASES = {"1rank": (1, []), "dp2": (2, []), "tp2": (2, ["parallel.tp=2"]), "pp2": (2, ["parallel.pp=2"])}
WRAPPED = ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "batch_isend_irecv", "broadcast")


class _Counter(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


class _Timed:
    """CPU time (this process, all threads) inside collective calls and the waits of their handles."""

    def __init__(self):
        self.calls, self.cpu = 0, 0.0
        self.orig = {n: getattr(dist, n) for n in WRAPPED}

    def _work(self, w):
        timed = self
        wait = w.wait

        def waited(*a, **k):
            t = time.process_time()
            try:
                return wait(*a, **k)
            finally:
                timed.cpu += time.process_time() - t

        try:
            w.wait = waited
        except AttributeError:
            pass
        return w

    def wrap(self, name):
        fn = self.orig[name]

        def call(*a, **k):
            self.calls += 1
            t = time.process_time()
            try:
                out = fn(*a, **k)
            finally:
                self.cpu += time.process_time() - t
            if isinstance(out, list):
                return [self._work(w) for w in out]
            return self._work(out) if out is not None and hasattr(out, "wait") else out

        return call

    def __enter__(self):
        for n in WRAPPED:
            setattr(dist, n, self.wrap(n))
        return self

    def __exit__(self, *exc):
        for n, fn in self.orig.items():
            setattr(dist, n, fn)


def _worker(rank: int, world: int, overrides: list, path: str, steps: int, out: dict) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from megacrystal.config import load_config
    from megacrystal.engine.engine import Engine
    from megacrystal.engine.smoke import split_for_rank, synthetic_batch

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    cfg = load_config(str(ROOT / "examples" / "demo.yaml"), overrides + ["train.device=cpu"], validate=False)
    from megacrystal.parallel import state

    grid = state.build_grid(cfg, world, rank)
    engine = Engine(cfg, torch.device("cpu"))
    t, s, v = cfg.train, cfg.data.seq_length, cfg.model.resolve().vocab_size
    mbs = [
        split_for_rank(synthetic_batch(i, t.global_batch_size, s, v, 0), grid.dp_rank, grid.dp_size, t.micro_batch_size)
        for i in range(3)
    ]
    for i in range(3):
        engine.train_step(mbs[i % 3], 1e-3)
    with _Counter() as c:
        engine.train_step(mbs[0], 1e-3)
    if world > 1:
        dist.barrier()
    timed = _Timed()
    w0, p0, t0 = time.perf_counter(), time.process_time(), time.thread_time()
    with timed:
        for i in range(steps):
            engine.train_step(mbs[i % 3], 1e-3)
    w1, p1, t1 = time.perf_counter(), time.process_time(), time.thread_time()
    out[rank] = dict(
        wall_s=(w1 - w0) / steps,
        process_cpu_s=(p1 - p0) / steps,
        thread_cpu_s=(t1 - t0) / steps,
        collective_cpu_s=timed.cpu / steps,
        collectives=timed.calls / steps,
        ops=c.n,
        micro_batches=len(mbs[0]),
    )
    if world > 1:
        dist.barrier()
        state.destroy()


def _probe(rank: int, path: str, sizes: list, out: dict) -> None:
    """CPU time per all-reduce between two processes, each call after ~0.5 ms of matmul."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    a, b = torch.randn(64, 256), torch.randn(256, 256)
    res = {}
    for nbytes in sizes:
        x = torch.zeros(max(1, nbytes // 4))
        for _ in range(5):
            dist.all_reduce(x)
        dist.barrier()
        n, spent = 200, 0.0
        for _ in range(n):
            for _ in range(8):
                a @ b
            t = time.process_time()
            dist.all_reduce(x)
            spent += time.process_time() - t
        res[nbytes] = spent / n
    out[rank] = res
    dist.barrier()
    dist.destroy_process_group()


def run(world: int, overrides: list, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as d, mp.Manager() as man:
        out = man.dict()
        if world == 1:
            _worker(0, 1, overrides, os.path.join(d, "rdv"), steps, out)
        else:
            mp.spawn(_worker, args=(world, overrides, os.path.join(d, "rdv"), steps, out), nprocs=world, join=True)
        return {int(k): dict(v) for k, v in out.items()}


def probe(sizes: list) -> dict:
    with tempfile.TemporaryDirectory() as d, mp.Manager() as man:
        out = man.dict()
        mp.spawn(_probe, args=(os.path.join(d, "rdv"), sizes, out), nprocs=2, join=True)
        return {int(k): {int(s): v for s, v in dict(r).items()} for k, r in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--probe", default="16,24,2048,4096,131072,1048576,1916416")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    results = {}
    for name in a.cases.split(","):
        world, over = CASES[name]
        load0 = os.getloadavg()
        ranks = run(world, over, a.steps)
        results[name] = dict(world=world, overrides=over, load_before=load0, load_after=os.getloadavg(), ranks=ranks)
        r = ranks[0]
        print(
            f"{name:<5} cpu/step {r['process_cpu_s'] * 1e3:6.1f} ms (thread {r['thread_cpu_s'] * 1e3:6.1f}), "
            f"in collectives {r['collective_cpu_s'] * 1e3:6.1f} ms over {r['collectives']:.0f}, ops {r['ops']}, "
            f"wall {r['wall_s'] * 1e3:6.1f} ms, load {load0[0]:.1f}",
            flush=True,
        )
    sizes = [int(x) for x in a.probe.split(",") if x]
    load0 = os.getloadavg()
    pr = probe(sizes) if sizes else {}
    print("probe: CPU s per all-reduce after compute:", {k: round(v * 1e3, 3) for k, v in pr.get(0, {}).items()})
    doc = dict(
        benchmark="benchmarks/planner_cpu_profile.py",
        date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        machine=dict(platform=platform.platform(), cores=os.cpu_count()),
        versions=dict(python=platform.python_version(), torch=torch.__version__),
        steps=a.steps,
        results=results,
        probe=dict(load_before=load0, load_after=os.getloadavg(), all_reduce_cpu_s=pr),
    )
    out = (
        Path(a.out)
        if a.out
        else ROOT / "benchmarks" / "results" / f"planner-cpu-profile-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.write_text(json.dumps(doc, indent=1))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
