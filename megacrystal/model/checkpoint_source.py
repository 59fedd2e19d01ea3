"""The one place that reads a model out of what a user calls a checkpoint (for export-hf and eval).

`read_checkpoint(path)` accepts a consolidated model directory, a training checkpoint holding one as
`model/`, or a run / checkpoints directory whose `latest` marker names such a checkpoint (see
`serialization.find_model_dir`), and returns (ModelConfig, serial state dict, tokenizer file or None).
When the checkpoint format changes, only this module changes.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from .serialization import find_model_dir, load_model, tokenizer_in


def read_checkpoint(path) -> tuple[ModelConfig, dict[str, torch.Tensor], str | None]:
    cfg, sd = load_model(path)
    return cfg, sd, tokenizer_in(find_model_dir(path))
