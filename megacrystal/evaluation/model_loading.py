"""The one place that turns a path into weights to evaluate.

    loaded = load_for_eval(path)      # a run dir, a checkpoint, a model dir, or an HF export

Everything `megacrystal eval` needs from a saved model goes through `load_for_eval`: the resolved
ModelConfig, the serial (consolidated) state dict on the CPU, the tokenizer file saved with it, and
where it came from (checkpoint directory, step, run directory) for the report. A new checkpoint
format only has to change this function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ModelConfig


class EvalInputError(ValueError):
    """A path that holds no model to evaluate; the message names it."""


@dataclass
class LoadedModel:
    cfg: ModelConfig
    state_dict: dict
    tokenizer_path: str | None
    origin: dict = field(default_factory=dict)  # path, kind, checkpoint, step, tokens, phase, run_dir


def load_for_eval(path: str) -> LoadedModel:
    """(ModelConfig, serial state dict, tokenizer) from a run directory (its newest checkpoint), one
    training checkpoint, a consolidated model directory, or an HF directory (config.json + weights)."""
    from ..model.serialization import CONFIG_FILE, find_model_dir

    p = Path(path)
    if not p.is_dir():
        raise EvalInputError(f"{p}: not a directory (expected a run, a checkpoint, a model or an HF directory)")
    if (p / "config.json").is_file() and not (p / CONFIG_FILE).is_file():
        from ..hf.convert import hf_to_model

        cfg, sd, tok = hf_to_model(str(p))
        return LoadedModel(cfg, sd, tok, dict(path=str(p), kind="hf", checkpoint=str(p), step=None, run_dir=None))
    from ..checkpoint import checkpoint_tokenizer, load_model_state, resolve_checkpoint
    from ..checkpoint.format import CheckpointError

    try:
        cfg, sd = load_model_state(p)  # a run, a (sharded) checkpoint or a consolidated model directory
        try:
            ckpt = resolve_checkpoint(p)
        except CheckpointError:  # a consolidated model directory
            model_dir = find_model_dir(p)
            ckpt = model_dir.parent if model_dir.name == "model" else model_dir
    except CheckpointError as e:
        raise EvalInputError(str(e)) from None
    meta, run_dir = {}, None
    trainer = ckpt / "trainer.json"
    if trainer.is_file():
        try:
            meta = json.loads(trainer.read_text())
        except json.JSONDecodeError:
            raise EvalInputError(f"{trainer}: not valid JSON") from None
        if ckpt.parent.name == "checkpoints":
            run_dir = str(ckpt.parent.parent)
    origin = dict(path=str(p), kind="checkpoint", checkpoint=str(ckpt), step=meta.get("step"), run_dir=run_dir)
    origin.update(tokens=meta.get("tokens"), phase=meta.get("phase"))  # tokens seen, phase at the save
    return LoadedModel(cfg, sd, checkpoint_tokenizer(p), origin)
