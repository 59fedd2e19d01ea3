"""Checkpoint benchmark: save stall (time training is blocked) sync vs async, save and load MB/s,
checkpoint size, and load of a resharded checkpoint vs the same-layout load, on gloo CPU ranks.

Layout A: tp2 x dp2, layout B: pp2 x dp2, both with the distributed optimizer (every rank holds a
quarter of the state either way). Reshard load: B loading A's checkpoint, against B loading its own
(same target, same bytes per rank). Each rank times its own part; a figure is the slowest rank's. A sync save's stall is
the whole save (stage + write + fsync + checksums + commit); an async save's stall is the staging copy
(first save: buffers allocated; steady: the staging buffers reused), its write runs behind. Load
MB/s: checkpoint bytes / load time (read + copy into the engine + all-gather of ZeRO slices).

    python benchmarks/checkpoint.py --shape demo
    python benchmarks/checkpoint.py --shape 1b-ish      # the largest shape that fits the box, see SHAPES
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.parallel_bench_util import record, spawn

# demo: examples/demo.yaml's model (tiny preset, 4096 vocabulary). "1b-ish": the crystal-1b shapes (hidden
# 2048, 16 heads, ffn 5461, vocabulary 32032) with 2 of its 24 layers (pp2 needs an even count), 0.17 B
# parameters. A 4-layer version (0.27 B) took ~5 GB per rank here (engine, gradients, staging, DCP read
# buffers) and was OOM-killed on this 24 GiB box shared with other jobs.
SHAPES = {
    "demo": ["model.preset=tiny", "model.vocab_size=4096", "model.max_seq_len=128"],
    "1b-ish": ["model.preset=crystal-1b", "model.num_layers=2"],
}
LAYOUT_A = ["parallel.tp=2", "parallel.distributed_optimizer=true"]
LAYOUT_B = ["parallel.pp=2", "parallel.distributed_optimizer=true"]


def _cfg(shape: str, layout: list[str]):
    from megacrystal.config import load_config

    extra = ["train.global_batch_size=8", "train.micro_batch_size=1", "data.seq_length=128"]
    return load_config(None, [*SHAPES[shape], *layout, *extra])


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

    from megacrystal.parallel.engine import Engine
    from megacrystal.train.checkpoint_io import Checkpointer

    engine = Engine(_cfg(shape, LAYOUT_A), torch.device("cpu"))
    res = dict(params=engine.num_parameters())
    sync = Checkpointer(engine, f"{out}/sync", async_save=False)
    res["sync_save_s"] = _timed(lambda: sync.save(1, {}))
    sync._cache.clear()  # one set of staging buffers at a time
    asy = Checkpointer(engine, f"{out}/async", async_save=True, group=sync.group)
    for i, key in enumerate(("async_first", "async_steady")):
        dist.barrier()
        t0 = time.perf_counter()
        asy.save(i + 1, {})
        res[f"{key}_stall_s"] = _slowest(time.perf_counter() - t0)
        res[f"{key}_total_s"] = _slowest(time.perf_counter() - t0 + _wait(asy))
    asy.close()
    loader = Checkpointer(engine, f"{out}/x", async_save=False, group=sync.group)
    res["same_layout_load_s"] = _timed(lambda: loader.load(ckpt))
    return res


def _reshard_side(shape, out, ckpt) -> dict:
    import torch

    from megacrystal.parallel.engine import Engine
    from megacrystal.train.checkpoint_io import Checkpointer

    other = Engine(_cfg(shape, LAYOUT_B), torch.device("cpu"))
    own = Checkpointer(other, f"{out}/b", async_save=False)
    own.save(1, {})
    mine = Path(out) / "b" / "checkpoints" / "step_00000001"
    return dict(b_same_layout_load_s=_timed(lambda: own.load(mine)), reshard_load_s=_timed(lambda: own.load(ckpt)))


def _rank(rank, world, shape, out):
    import gc

    ckpt = Path(out) / "sync" / "checkpoints" / "step_00000001"
    res = _save_side(shape, out, ckpt)
    gc.collect()
    res.update(_reshard_side(shape, out, ckpt))
    return res


def _wait(ck) -> float:
    t0 = time.perf_counter()
    ck.wait()
    return time.perf_counter() - t0


def measure(shape: str, ranks: int, root: str) -> dict:
    out = tempfile.mkdtemp(prefix=f"ckpt-bench-{shape}-", dir=root)
    try:
        r = spawn(_rank, ranks, (shape, out), timeout=3600)[0]
        ckpt = Path(out) / "sync" / "checkpoints" / "step_00000001"
        size = sum(f.stat().st_size for f in ckpt.iterdir())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    mb = size / 2**20
    return dict(
        shape=shape,
        overrides=SHAPES[shape],
        ranks=ranks,
        layout_a=LAYOUT_A,
        layout_b=LAYOUT_B,
        checkpoint_mib=round(mb, 1),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()},
        save_mib_s=round(mb / r["sync_save_s"], 1),
        same_layout_load_mib_s=round(mb / r["same_layout_load_s"], 1),
        reshard_load_mib_s=round(mb / r["reshard_load_s"], 1),
        async_stall_over_sync=round(r["async_steady_stall_s"] / r["sync_save_s"], 4),
        reshard_over_same_layout_speed=round(r["b_same_layout_load_s"] / r["reshard_load_s"], 3),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), action="append")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--dir", default=None, help="where checkpoints are written (default: the system temp dir)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for shape in args.shape or ["demo", "1b-ish"]:
        row = measure(shape, args.ranks, args.dir)
        rows.append(row)
        print(
            f"{shape}: {row['params'] / 1e6:.1f} M params, checkpoint {row['checkpoint_mib']} MiB on {args.ranks} "
            f"ranks | sync save {row['sync_save_s']:.2f} s ({row['save_mib_s']} MiB/s) | async stall "
            f"{row['async_steady_stall_s']:.3f} s steady, {row['async_first_stall_s']:.3f} s first "
            f"({100 * row['async_stall_over_sync']:.1f}% of sync) | load {row['same_layout_load_s']:.2f} s "
            f"({row['same_layout_load_mib_s']} MiB/s) | on B: own {row['b_same_layout_load_s']:.2f} s, A's {row['reshard_load_s']:.2f} s "
            f"({row['reshard_load_mib_s']} MiB/s, {row['reshard_over_same_layout_speed']}x)",
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
