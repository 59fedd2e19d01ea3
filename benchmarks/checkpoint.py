"""Checkpoint benchmark: save stall (time training is blocked) sync vs async, save and load MB/s,
checkpoint size, and load of a resharded checkpoint vs the same-layout load, on gloo CPU ranks.

Each shape has two layouts, A and B, with the distributed optimizer (see SHAPES): demo and 1b-ish
tp2·dp2 and pp2·dp2, 0.5b and 1b tp2·pp2 and pp4 (each rank a quarter of the model, so the 1 B shape
fits 24 GiB). Reshard load: B loading A's checkpoint, against B loading its own (same target, same
bytes per rank). Each rank times its own part; a figure is the slowest rank's. A sync save's stall is
the whole save (write + fsync + checksums + commit); an async save's stall is the staging copy (first
save: buffers allocated; steady: the staging buffers reused), its write runs behind. Load MB/s:
checkpoint bytes / load time (read + copy into the engine + all-gather of ZeRO slices). Layout A's
saves and loads run in one set of processes, layout B's in a fresh one. Peak RSS: the largest
resident set of a rank.

    python benchmarks/checkpoint.py --shape demo --shape 1b-ish --shape 0.5b
    python benchmarks/checkpoint.py --shape 1b      # sync only: its async staging copy does not fit 24 GiB
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.parallel_bench_util import record, spawn

# demo: examples/demo.yaml's model (tiny preset, 4096 vocabulary). The others: the crystal-1b shapes
# (hidden 2048, 16 heads, ffn 5461, vocabulary 32032) with 2, 8 and 16 of its 24 layers: 0.17, 0.47 and
# 0.87 B parameters. fp32 training state is 16 B/param (weights, gradients, Adam moments; the fp32
# weights are the masters); an async save's staging copy adds 12 B/param of host memory, which for
# 0.87 B (14 GB of state) would need 24 GB in all, with the processes' own ~1 GB each: the 1b shape measures the synchronous save only.
TP2_DP2 = (["parallel.tp=2"], ["parallel.pp=2"])
QUARTERS = (["parallel.tp=2", "parallel.pp=2"], ["parallel.pp=4"])
SHAPES = {
    "demo": dict(model=["model.preset=tiny", "model.vocab_size=4096", "model.max_seq_len=128"], layouts=TP2_DP2),
    "1b-ish": dict(model=["model.preset=crystal-1b", "model.num_layers=2"], layouts=TP2_DP2),
    "0.5b": dict(model=["model.preset=crystal-1b", "model.num_layers=8"], layouts=QUARTERS),
    "1b": dict(
        model=["model.preset=crystal-1b", "model.num_layers=16"], layouts=QUARTERS, async_save=False, load_repeats=1
    ),
}
ZERO = ["parallel.distributed_optimizer=true"]


def _cfg(shape: str, which: int):
    from megacrystal.config import load_config

    extra = ["train.global_batch_size=8", "train.micro_batch_size=1", "data.seq_length=128"]
    return load_config(None, [*SHAPES[shape]["model"], *SHAPES[shape]["layouts"][which], *ZERO, *extra])


def _slowest(t: float) -> float:
    import torch
    import torch.distributed as dist

    x = torch.tensor([t], dtype=torch.float64)
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return float(x.item())


def _timed(fn) -> float:
    import torch.distributed as dist

    dist.barrier()
    t0 = time.perf_counter()
    fn()
    return _slowest(time.perf_counter() - t0)


def _save_side(shape, out, ckpt) -> dict:
    import torch
    import torch.distributed as dist

    from megacrystal.checkpoint import Checkpointer
    from megacrystal.engine.engine import Engine

    engine = Engine(_cfg(shape, 0), torch.device("cpu"))
    res = dict(params=engine.num_parameters())
    sync = Checkpointer(engine, f"{out}/sync", async_save=False)
    res["sync_save_s"] = _timed(lambda: sync.save(1, {}))
    if SHAPES[shape].get("async_save", True):
        asy = Checkpointer(engine, f"{out}/async", async_save=True, group=sync.group)
        for i, key in enumerate(("async_first", "async_steady")):
            dist.barrier()
            t0 = time.perf_counter()
            asy.save(i + 1, {})
            res[f"{key}_stall_s"] = _slowest(time.perf_counter() - t0)
            res[f"{key}_total_s"] = _slowest(time.perf_counter() - t0 + _wait(asy))
        asy.close()
        asy._cache.clear()  # the staging buffers are not needed by the loads
        shutil.rmtree(f"{out}/async", ignore_errors=True)  # the benchmark's own scratch: disk for the next saves
    loader = Checkpointer(engine, f"{out}/x", async_save=False, group=sync.group)
    res["same_layout_load_s"] = _timed(lambda: loader.load(ckpt))
    return res


def _reshard_side(shape, out, ckpt) -> dict:
    import torch

    from megacrystal.checkpoint import Checkpointer
    from megacrystal.engine.engine import Engine

    other = Engine(_cfg(shape, 1), torch.device("cpu"))
    own = Checkpointer(other, f"{out}/b", async_save=False)
    own.save(1, {})
    mine = Path(out) / "b" / "checkpoints" / "step_00000001"
    own_s, reshard_s = [], []
    for _ in range(SHAPES[shape].get("load_repeats", 3)):  # alternated; the median of each
        own_s.append(_timed(lambda: own.load(mine)))
        reshard_s.append(_timed(lambda: own.load(ckpt)))
    return dict(b_same_layout_load_s=statistics.median(own_s), reshard_load_s=statistics.median(reshard_s))


def _peak_rss_mib() -> float:
    import resource

    return _slowest(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _rank_a(rank, world, shape, out):
    res = _save_side(shape, out, Path(out) / "sync" / "checkpoints" / "step_00000001")
    return dict(res, peak_rss_mib_a=_peak_rss_mib())


def _rank_b(rank, world, shape, out):
    """Layout B in fresh processes, as a resharded restart is a new job."""
    res = _reshard_side(shape, out, Path(out) / "sync" / "checkpoints" / "step_00000001")
    return dict(res, peak_rss_mib_b=_peak_rss_mib())


def _wait(ck) -> float:
    t0 = time.perf_counter()
    ck.wait()
    return time.perf_counter() - t0


def measure(shape: str, ranks: int, root: str) -> dict:
    out = tempfile.mkdtemp(prefix=f"ckpt-bench-{shape}-", dir=root)
    try:
        r = spawn(_rank_a, ranks, (shape, out), timeout=3600)[0]
        r.update(spawn(_rank_b, ranks, (shape, out), timeout=3600)[0])
        r["peak_rss_mib_per_rank"] = max(r.pop("peak_rss_mib_a"), r.pop("peak_rss_mib_b"))
        ckpt = Path(out) / "sync" / "checkpoints" / "step_00000001"
        size = sum(f.stat().st_size for f in ckpt.iterdir())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    mb = size / 2**20
    return dict(
        shape=shape,
        overrides=SHAPES[shape]["model"],
        ranks=ranks,
        layout_a=SHAPES[shape]["layouts"][0] + ZERO,
        layout_b=SHAPES[shape]["layouts"][1] + ZERO,
        checkpoint_mib=round(mb, 1),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()},
        save_mib_s=round(mb / r["sync_save_s"], 1),
        same_layout_load_mib_s=round(mb / r["same_layout_load_s"], 1),
        reshard_load_mib_s=round(mb / r["reshard_load_s"], 1),
        async_stall_over_sync=round(r["async_steady_stall_s"] / r["sync_save_s"], 4)
        if "async_steady_stall_s" in r
        else None,
        reshard_over_same_layout_speed=round(r["b_same_layout_load_s"] / r["reshard_load_s"], 3),
    )


def _async_text(row: dict) -> str:
    if row["async_stall_over_sync"] is None:
        return "async not measured"
    return (
        f"async stall {row['async_steady_stall_s']:.3f} s steady, {row['async_first_stall_s']:.3f} s first "
        f"({100 * row['async_stall_over_sync']:.1f}% of sync)"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), action="append")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--dir", default=None, help="where checkpoints are written (default: the system temp dir)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for shape in args.shape or ["demo", "1b-ish", "0.5b"]:
        row = measure(shape, args.ranks, args.dir)
        rows.append(row)
        print(
            f"{shape}: {row['params'] / 1e6:.1f} M params, checkpoint {row['checkpoint_mib']} MiB on {args.ranks} "
            f"ranks | sync save {row['sync_save_s']:.2f} s ({row['save_mib_s']} MiB/s) | {_async_text(row)} "
            f"| load {row['same_layout_load_s']:.2f} s "
            f"({row['same_layout_load_mib_s']} MiB/s) | on B: own {row['b_same_layout_load_s']:.2f} s, A's {row['reshard_load_s']:.2f} s "
            f"({row['reshard_load_mib_s']} MiB/s, {row['reshard_over_same_layout_speed']}x) "
            f"| peak RSS {row['peak_rss_mib_per_rank'] / 1024:.1f} GiB per rank",
            flush=True,
        )
    if not args.no_record:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        payload = dict(description=__doc__.split("\n\n", 1)[0], load_avg=os.getloadavg(), results=rows)
        path = record(f"checkpoint-cpu-{stamp}", payload)
        print(f"recorded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
