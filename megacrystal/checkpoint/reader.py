"""Reading checkpoints offline (no process group): what `export-hf`, `generate`, evaluation and
`train.save_consolidated` use.

    cfg, sd = load_model_state(path)   # ModelConfig + the serial model's state dict (CPU)

`path`: a checkpoint directory, a run or `checkpoints/` directory (its newest intact checkpoint), or
a consolidated model directory. Checksums are verified before anything is read; tensor data is
read with `torch.load(weights_only=True)` and the metadata with an allow-list unpickler.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from ..config import ConfigError, ModelConfig
from ..config.loading import coerce
from ..model.padding import refit
from ..model.serialization import CONFIG_FILE, ModelFormatError, find_model_dir, load_model, save_model, tokenizer_in
from ..model.transformer import serial_layout
from .dcp import PieceLoadPlanner, Pieces, SafeFileSystemReader, one_line
from .files import find_resume_point, trainer_meta, verify
from .format import MANIFEST, TRAINER, CheckpointError
from .layout import MODEL, Piece


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory from a checkpoint, a `checkpoints/` directory or a run directory
    (then the newest intact checkpoint)."""
    p = Path(path)
    if (p / TRAINER).is_file() or (p / MANIFEST).is_file():
        return p
    for run in (p, p.parent if p.name == "checkpoints" else None):
        if run is not None and (run / "checkpoints").is_dir():
            found = find_resume_point(run)
            if found is not None:
                return found
    raise CheckpointError(f"{p}: no checkpoint here (expected a step_N directory, checkpoints/ or a run directory)")


def _consolidated(p: Path, dtype):
    cfg, sd = load_model(p)
    return cfg, ({k: v.to(dtype) for k, v in sd.items()} if dtype is not None else sd)


def load_model_state(path, dtype: torch.dtype | None = None):
    """(resolved ModelConfig, serial state dict on CPU) from a DCP checkpoint, a run or `checkpoints/`
    directory (its newest intact checkpoint), or a consolidated model directory. Offline: no process
    group. Checksums are verified. `dtype`: default the run's parameter dtype (bf16 runs give bf16)."""
    p = Path(path)
    if (p / CONFIG_FILE).is_file() or ((p / "model" / CONFIG_FILE).is_file() and not (p / MANIFEST).is_file()):
        return _consolidated(p, dtype)
    try:
        ckpt = resolve_checkpoint(p)
    except CheckpointError as e:
        try:  # no DCP checkpoint: a consolidated model a `latest` marker leads to (the old format's model/)
            return _consolidated(p, dtype)
        except ModelFormatError:
            raise e from None
    problem = verify(ckpt)
    if problem:
        raise CheckpointError(problem)
    meta = trainer_meta(ckpt)
    try:
        cfg = coerce(meta["model"], ModelConfig, "model", str(ckpt / TRAINER)).resolve()
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt / TRAINER}: bad model config ({e})") from None
    layout = serial_layout(cfg)
    state = {MODEL + n: Pieces(true, [Piece((0,) * len(true), torch.empty(true))]) for n, (_, true) in layout.items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(state, storage_reader=SafeFileSystemReader(ckpt), planner=PieceLoadPlanner(), no_dist=True)
    except (Exception, dcp.api.CheckpointException) as e:
        raise CheckpointError(f"{ckpt}: cannot load ({one_line(e)})") from None
    out_dtype = dtype or (torch.bfloat16 if meta.get("precision") == "bf16" else torch.float32)
    sd = {}
    for n, (shape, true) in layout.items():
        sd[n] = refit(state[MODEL + n].pieces[0].tensor, true, shape).to(out_dtype)
    return cfg, sd


def save_consolidated(out_dir, tokenizer_path: str | None = None) -> Path:
    """`out_dir/model/` (safetensors + config + tokenizer) from the run's newest intact checkpoint,
    read from disk by this one process (no gather over ranks)."""
    cfg, sd = load_model_state(out_dir)
    return save_model(Path(out_dir) / "model", cfg, sd, tokenizer_path=tokenizer_path)


def checkpoint_tokenizer(path) -> str | None:
    """The tokenizer file stored with a checkpoint (or model directory), if any."""
    p = Path(path)
    try:
        return tokenizer_in(resolve_checkpoint(p))
    except CheckpointError:
        try:
            return tokenizer_in(find_model_dir(p))
        except ValueError:
            return None


def read_checkpoint(path) -> tuple[ModelConfig, dict[str, torch.Tensor], str | None]:
    """The model of what a user calls a checkpoint (for export-hf, generate and the lm-eval harness):
    a training checkpoint, a run or `checkpoints/` directory (its newest intact checkpoint) or a
    consolidated model directory -> (ModelConfig, serial state dict, tokenizer file or None). Offline."""
    cfg, sd = load_model_state(path)
    return cfg, sd, checkpoint_tokenizer(path)
