"""The one place that reads a model out of what a user calls a checkpoint (for export-hf, generate and
the lm-eval harness).

`read_checkpoint(path)` accepts a training checkpoint (DCP), a run or `checkpoints/` directory (its newest
intact checkpoint) or a consolidated model directory, and returns (ModelConfig, serial state dict,
tokenizer file or None). It reads offline, with no process group (`train/checkpoint_io.py`).
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..train.checkpoint_io import checkpoint_tokenizer, load_model_state


def read_checkpoint(path) -> tuple[ModelConfig, dict[str, torch.Tensor], str | None]:
    cfg, sd = load_model_state(path)
    return cfg, sd, checkpoint_tokenizer(path)
