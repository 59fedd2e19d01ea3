"""A full disk while rank 0 commits a checkpoint, on two real gloo ranks.

The shard files are written and checksummed; then rank 0 writes trainer.json and manifest.json and
updates `latest`. ENOSPC on the manifest (the file that makes a checkpoint complete) must fail the
save on *every* rank with the one-line space error, remove the partial directory and keep the older
checkpoint as `latest`. ENOSPC on `latest` (after the rename) must not fail the save: the checkpoint
is complete, `latest` is only a hint, and a resume finds the new checkpoint by scanning."""

from __future__ import annotations

import errno

import torch

from megacrystal.checkpoint import files as checkpoint_files
from megacrystal.checkpoint import writer as checkpoint_io
from megacrystal.checkpoint.files import find_resume_point, verify
from megacrystal.checkpoint.format import MANIFEST
from tests.dist import run_ranks
from tests.parallel_cases import LR, data, make_cfg, split


def _full_disk_on(name: str, original):
    """atomic_write that, for file `name`, writes half of the bytes and then meets a full disk."""

    def write(path, payload: bytes):
        if path.name != name:
            return original(path, payload)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(payload[: len(payload) // 2])
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        finally:
            tmp.unlink()  # what atomic_write does with its temporary file on failure

    return write


def _rank(rank: int, world: int, out: str) -> list[str]:
    from megacrystal.checkpoint.format import CheckpointSpaceError
    from megacrystal.engine.engine import Engine

    cfg = make_cfg(["parallel.distributed_optimizer=true"])
    e = Engine(cfg, torch.device("cpu"))
    ck = checkpoint_io.Checkpointer(e, out, async_save=True)
    seen, original = [], checkpoint_files.atomic_write
    for i, b in enumerate(data(steps=3)):
        g = e.grid
        e.train_step(split(b, g.dp_rank, g.dp_size, cfg.train.micro_batch_size), LR)
        step = i + 1
        if rank == 0 and step == 2:
            checkpoint_files.atomic_write = _full_disk_on(MANIFEST, original)
        if rank == 0 and step == 3:
            checkpoint_files.atomic_write = original
            checkpoint_io.atomic_write = _full_disk_on("latest", original)
        ck.save(step, {})
        try:
            ck.wait()
            seen.append(f"{step}: ok")
        except CheckpointSpaceError as err:
            seen.append(f"{step}: {err}")
    ck.close()
    return seen


def test_a_full_disk_while_rank_0_writes_the_manifest_or_latest(tmp_path):
    out = tmp_path / "run"
    results = run_ranks(_rank, 2, args=(str(out),), timeout=300)
    root = out / "checkpoints"
    for seen in results:  # every rank sees the same outcome
        assert seen[0] == "1: ok" and seen[2] == "3: ok", seen
        msg = seen[1]
        assert msg.startswith("2: ") and "\n" not in msg
        assert "step_00000002.tmp: no space left on device" in msg and "MiB free" in msg, msg
    # step 2's partial directory is gone; steps 1 and 3 are intact; `latest` kept its last good value
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001", "step_00000003"]
    assert verify(root / "step_00000001") is None and verify(root / "step_00000003") is None
    assert (root / "latest").read_text() == "step_00000001"
    assert find_resume_point(out) == root / "step_00000003"  # the stale hint changes nothing
