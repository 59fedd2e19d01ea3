"""A process that trains the tiny model and checkpoints asynchronously after every step, and pauses
its `nth` save of this run at a named point inside the write (a test hook: the kill -9 test of
test_checkpoint_integrity.py SIGKILLs it there, with no clock involved).

    python -m tests.checkpoint_kill_child OUT_DIR POINT NTH

Points, in the order a save reaches them (checkpoint/writer.py):
  shards    the shard files are written, nothing else (before their checksums)
  trainer   trainer.json is written too (before the manifest)
  manifest  the manifest is written (before the rename that commits the checkpoint)
  latest    the checkpoint is committed, `latest` still names the previous one
The process prints `saving N` as each save starts and `paused POINT N` when it stops there.
"""

from __future__ import annotations

import sys
import threading

import torch

from megacrystal.checkpoint import Checkpointer, writer
from megacrystal.checkpoint.files import find_resume_point
from megacrystal.engine.engine import Engine
from tests.parallel_cases import LR, data, make_cfg, split

SHAPE = ["model.hidden_size=128", "model.ffn_hidden_size=512", "model.vocab_size=4000", "model.mup_base_width=128"]
POINTS = ("shards", "trainer", "manifest", "latest")


def _pause(point: str, step: int) -> None:
    print(f"paused {point} {step}", flush=True)
    threading.Event().wait(600)  # until the test kills this process (bounded)
    raise SystemExit(f"checkpoint_kill_child: not killed while paused at {point}")


def install(point: str, step: int) -> None:
    tmp_name = f"step_{step:08d}.tmp"
    file_crc, atomic_write, write_manifest = writer.file_crc, writer.atomic_write, writer.write_manifest

    def crc(path):
        if point == "shards" and path.parent.name == tmp_name:
            _pause(point, step)
        return file_crc(path)

    def atomic(path, data):
        if point == "latest" and path.name == "latest" and data == f"step_{step:08d}".encode():
            _pause(point, step)
        atomic_write(path, data)
        if point == "trainer" and path.parent.name == tmp_name:
            _pause(point, step)

    def manifest(directory, files):
        write_manifest(directory, files)
        if point == "manifest" and directory.name == tmp_name:
            _pause(point, step)

    writer.file_crc, writer.atomic_write, writer.write_manifest = crc, atomic, manifest


def main(out_dir: str, point: str, nth: int) -> None:
    torch.set_num_threads(1)
    cfg = make_cfg(SHAPE)
    engine = Engine(cfg, torch.device("cpu"))
    ck = Checkpointer(engine, out_dir, async_save=True)
    start = 0
    found = find_resume_point(out_dir)
    if found is not None:
        start = ck.load(found)["step"]
    install(point, start + nth)
    bs = data(steps=40, vocab=4000)
    for step in range(start, 40):
        engine.train_step(split(bs[step], 0, 1, cfg.train.micro_batch_size), LR)
        print(f"saving {step + 1}", flush=True)
        ck.save(step + 1, {})
    ck.close()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
