"""A real training run on synthetic batches, to check a launch (and the parallel setup) end to end:

    torchrun --nproc-per-node 4 -m megacrystal.engine.smoke [--config C.yaml] [--steps N]
             [--lr LR] [--out FILE.json] [dotted.key=value ...]

Every step is `Engine.train_step` on random tokens drawn from a fixed seed (the same global batch
whatever the grid, split over dp ranks), so the losses printed by a 1-process run and a torchrun run
of the same config agree to rounding. Rank 0 prints one JSON line per step and writes all of them to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ..config import ConfigError, load_config
from ..data.context_parallel import split_micro_batch
from ..parallel.init import init_distributed
from ..parallel.state import destroy
from .engine import Engine


def synthetic_batch(step: int, global_batch: int, seq: int, vocab: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed * 1000003 + step)
    t = torch.randint(0, vocab, (global_batch, seq + 1), generator=g)
    mask = (torch.rand(global_batch, seq, generator=g) > 0.1).float()
    return dict(tokens=t[:, :-1], labels=t[:, 1:], loss_mask=mask)


def split_for_rank(batch: dict, dp_rank: int, dp: int, micro_batch: int) -> list[dict]:
    """This dp rank's contiguous share of the global batch, cut into micro-batches."""
    n = batch["tokens"].shape[0] // dp
    mine = {k: v[dp_rank * n : (dp_rank + 1) * n] for k, v in batch.items()}
    return [{k: v[i : i + micro_batch] for k, v in mine.items()} for i in range(0, n, micro_batch)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal.engine.smoke", description=__doc__.splitlines()[0])
    ap.add_argument("--config")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        grid, device = init_distributed(cfg)
    except ConfigError as e:
        print(f"megacrystal.engine.smoke: {e}", file=sys.stderr)
        return 2
    engine = Engine(cfg, device, grid)
    t, m = cfg.train, cfg.model
    records = []
    for step in range(args.steps):
        batch = synthetic_batch(step, t.global_batch_size, cfg.data.seq_length, m.vocab_size, t.seed)
        t0 = time.perf_counter()
        mbs = split_for_rank(batch, grid.dp_rank, grid.dp_size, t.micro_batch_size)
        mbs = [split_micro_batch(mb, grid.cp_rank, grid.cp_size) for mb in mbs]  # context parallel: this rank's part
        out = engine.train_step(mbs, args.lr)
        rec = dict(
            step=step,
            loss=out["loss"],
            grad_norm=out["grad_norm"],
            seconds=time.perf_counter() - t0,
            layout=grid.layout(),
            world=grid.world_size,
        )
        records.append(rec)
        if grid.rank == 0:
            print(json.dumps(rec), flush=True)
    if grid.rank == 0 and args.out:
        with open(args.out, "w") as f:
            json.dump(records, f)
    destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
