"""Loading on another layout deserialises each stored piece once per rank.

A checkpoint saved by one rank (each tensor one stored piece) is loaded on two ranks with the
distributed optimizer: a rank's ZeRO slice of a 2-D tensor is up to three rectangles, i.e. several
read requests into the same stored piece. DCP's own reader runs `torch.load` per request; ours per
stored piece. The loaded state must still be the saved one exactly."""

from __future__ import annotations

import torch

from megacrystal.checkpoint import Checkpointer
from megacrystal.engine.engine import Engine
from tests.dist import run_ranks
from tests.parallel_cases import LR, data, make_cfg, split

ZERO = ["parallel.distributed_optimizer=true"]


def _rank(rank: int, world: int, ckpt: str) -> dict:
    from megacrystal.checkpoint import dcp as checkpoint_dcp

    stats = dict(requests=0, pieces=0, loads=0)
    read_data, load = checkpoint_dcp.SafeFileSystemReader.read_data, torch.load

    def counting_read_data(self, plan, planner):
        where = {
            (self.storage_data[r.storage_index].relative_path, self.storage_data[r.storage_index].offset)
            for r in plan.items
        }
        stats["requests"] += len(plan.items)
        stats["pieces"] += len(where)
        return read_data(self, plan, planner)

    def counting_load(*args, **kwargs):
        stats["loads"] += 1
        return load(*args, **kwargs)

    e = Engine(make_cfg(ZERO), torch.device("cpu"))
    ck = Checkpointer(e, f"{ckpt}-{rank}", async_save=False)
    checkpoint_dcp.SafeFileSystemReader.read_data = counting_read_data
    torch.load = counting_load
    try:
        ck.load(ckpt)
    finally:
        torch.load = load
        checkpoint_dcp.SafeFileSystemReader.read_data = read_data
    return dict(stats, state=e.full_model_state())


def test_a_resharded_load_reads_each_stored_piece_once(tmp_path):
    cfg = make_cfg([])
    e = Engine(cfg, torch.device("cpu"))
    for b in data(steps=2):
        e.train_step(split(b, 0, 1, cfg.train.micro_batch_size), LR)
    Checkpointer(e, tmp_path / "one", async_save=False).save(2, {})
    saved = e.full_model_state()
    results = run_ranks(_rank, 2, args=(str(tmp_path / "one" / "checkpoints" / "step_00000002"),), timeout=300)
    for r in results:
        assert r["loads"] == r["pieces"], r  # one torch.load per stored piece touched
        assert r["requests"] > r["pieces"], r  # ... where DCP's reader would have loaded some several times
    for k, v in saved.items():  # the state gathered on rank 0
        assert torch.equal(results[0]["state"][k], v), k
