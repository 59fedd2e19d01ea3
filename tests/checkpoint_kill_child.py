"""A process that trains the tiny model and checkpoints asynchronously after every step, printing
`saving N` as each save starts: the kill -9 test (test_checkpoint_integrity.py) kills it mid-write.

    python -m tests.checkpoint_kill_child OUT_DIR FIRST_STEP
"""

from __future__ import annotations

import sys

import torch

from megacrystal.checkpoint import Checkpointer
from megacrystal.checkpoint.files import find_resume_point
from megacrystal.engine.engine import Engine
from tests.parallel_cases import LR, data, make_cfg, split

# wide enough that a save takes a noticeable time, so kills land inside writes
SHAPE = ["model.hidden_size=128", "model.ffn_hidden_size=512", "model.vocab_size=4000", "model.mup_base_width=128"]


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    cfg = make_cfg(SHAPE)
    engine = Engine(cfg, torch.device("cpu"))
    ck = Checkpointer(engine, out_dir, async_save=True)
    start = 0
    found = find_resume_point(out_dir)
    if found is not None:
        start = ck.load(found)["step"]
    bs = data(steps=40, vocab=4000)
    for step in range(start, 40):
        engine.train_step(split(bs[step], 0, 1, cfg.train.micro_batch_size), LR)
        print(f"saving {step + 1}", flush=True)
        ck.save(step + 1, {})
    ck.close()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
