"""Training checkpoints: the format, and the errors every checkpoint module raises.

    out_dir/checkpoints/step_00000100/
        __<rank>_0.distcp    torch.distributed.checkpoint data: the pieces this rank wrote
        .metadata            DCP metadata: every tensor's global shape and where each piece lives
        trainer.json         step, tokens, loader cursor, per-source counters, optimizer step, layout,
                             precision, config
        tokenizer.json | tokenizer.model   (when the run has one)
        manifest.json        size and crc32 of every other file; written last: its presence = complete
    out_dir/checkpoints/latest   name of the newest committed checkpoint (a hint; scanning is the truth)

Tensors are keyed by the serial model's names at their true shapes, so any layout can load them
(`layout`); a save is written into `step_X.tmp/` and renamed after every rank's files are
written, fsync'ed and checksummed (`writer`).
"""

from __future__ import annotations

import re

FORMAT = "megacrystal-checkpoint"
VERSION = 2
MANIFEST = "manifest.json"
TRAINER = "trainer.json"
STEP_DIR = re.compile(r"^step_(\d{8,})$")
OLD_SHARD = re.compile(r"^shard_tp\d+_pp\d+_dp\d+\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or resumed; the message is one line naming the file."""


class CheckpointSpaceError(CheckpointError):
    """The disk filled up during a save (the partial write was removed, older checkpoints kept)."""


def step_name(step: int) -> str:
    return f"step_{step:08d}"
