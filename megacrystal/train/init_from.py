"""`train.init_from`: start a new run from existing weights, on any layout.

PATH may be a DCP checkpoint (or a run / `checkpoints/` directory: its newest intact checkpoint), a
consolidated model directory (`model.safetensors` + `model_config.json`, e.g. an old-format
checkpoint's `model/`), or a Hugging Face directory in the crystalcoder or llama layout. From a DCP
checkpoint every rank reads only its pieces, and with `train.init_optimizer: true` (default) also
the Adam moments and step count; the others hold weights only, and every rank reads only the slices of
the files it keeps (safetensors slices; `hf/sliced.py` maps the HF layouts). The run's step, schedule and data
cursor start at 0 either way (that is what makes it a new run, e.g. phase 2 on a new cluster).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import load_engine_state, resolve_checkpoint
from ..checkpoint.files import verify
from ..checkpoint.format import MANIFEST, TRAINER, CheckpointError
from ..hf.convert import HFError
from ..hf.sliced import hf_source
from ..log import get_logger
from ..model.serialization import CONFIG_FILE, ModelFormatError, open_model


def _kind(p: Path) -> str:
    if (p / CONFIG_FILE).is_file() or ((p / "model" / CONFIG_FILE).is_file() and not (p / MANIFEST).is_file()):
        return "model"
    if (p / "config.json").is_file() and not (p / TRAINER).is_file():
        return "hf"
    return "dcp"


def init_from(engine, path, with_optimizer: bool = True, group=None) -> str:
    """Load weights (and optionally optimizer state) from `path` into `engine`; collective.
    Returns a one-line description for the log."""
    p = Path(path)
    kind = _kind(p)
    if kind == "dcp":
        ckpt = resolve_checkpoint(p)
        problem = verify(ckpt, group)
        if problem:
            raise CheckpointError(f"{problem} (train.init_from)")
        meta = load_engine_state(engine, ckpt, group, with_optimizer, check_precision=False, restore_rng=False)
        what = "weights + optimizer state" if with_optimizer else "weights"
        return f"initialised from {ckpt} (step {meta.get('step')}, {what})"
    try:  # every rank reads only the slices it keeps
        if kind == "hf":
            _, src, _ = hf_source(p, HFError)
        else:
            _, src = open_model(p)
        engine.load_full_model_state(src)
    except (HFError, ModelFormatError, ValueError) as e:
        raise CheckpointError(f"{p}: cannot initialise from it ({e})") from None
    if with_optimizer:
        get_logger().info(f"{p} holds no optimizer state: weights only (Adam moments start at zero)")
    return f"initialised from {p} ({'HF directory' if kind == 'hf' else 'consolidated model'}, weights)"
