"""The consolidated model directory: one full (unsharded) model that tools read and write.

    DIR/model.safetensors     every parameter of the serial model, names as `Transformer.state_dict()`
    DIR/model_config.json     {"format": "megacrystal-model", "version": 1, "model": <ModelConfig fields>}
    DIR/tokenizer.json | DIR/tokenizer.model   (optional) the tokenizer the model was trained with

`export-hf`, `import-hf` and `generate` use it; the trainer's checkpoints hold one (see `find_model_dir`).
Padded tensors (vocabulary rows, FFN inner size; see padding.py) may carry any amount of zero padding
beyond their true shape (a tensor-parallel run pads more); loading refits them to the serial model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..atomic_io import atomic_copy, atomic_write
from ..config import Config, ConfigError, DataConfig, ModelConfig, coerce, validate_config
from .padding import fit_problem, refit_state
from .transformer import Transformer, serial_layout
from .weight_source import FileSource

FORMAT = "megacrystal-model"
VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class ModelFormatError(ValueError):
    """A model directory or file that is not what it should be; the message names the file."""


def save_state_dict(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors file written atomically (tensors copied to CPU, contiguous, unshared)."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write(Path(path), save(tensors, metadata=metadata or {"format": "pt"}))


def copy_tokenizer(src: str | None, out_dir: Path) -> Path | None:
    """Copy a tokenizer file into `out_dir` as tokenizer.json (HF) or tokenizer.model (SentencePiece)."""
    if src is None:
        return None
    p = Path(src)
    if not p.is_file():
        raise ModelFormatError(f"{src}: tokenizer file not found")
    name = "tokenizer.json" if p.suffix == ".json" else "tokenizer.model"
    dst = Path(out_dir) / name
    if p.resolve() != dst.resolve():
        atomic_copy(p, dst)
    return dst


def tokenizer_in(directory) -> str | None:
    for name in TOKENIZER_FILES:
        p = Path(directory) / name
        if p.is_file():
            return str(p)
    return None


def save_model(
    directory, cfg: ModelConfig, state_dict: dict[str, torch.Tensor], tokenizer_path: str | None = None
) -> Path:
    cfg = cfg.resolve()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    check_state_dict(cfg, state_dict, str(out / MODEL_FILE))
    copy_tokenizer(tokenizer_path, out)
    save_state_dict(out / MODEL_FILE, state_dict)
    meta = {"format": FORMAT, "version": VERSION, "model": dataclasses.asdict(cfg)}
    atomic_write(out / CONFIG_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return out


def read_json_object(path: Path, error, missing: str) -> dict:
    """A JSON object from `path`, or `error` naming the file (`missing` says what was expected)."""
    if not path.is_file():
        raise error(f"{path}: not found ({missing})")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: expected a JSON object")
    return obj


def read_model_config(directory) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    meta = read_json_object(path, ModelFormatError, f"expected a model directory with {MODEL_FILE} + {CONFIG_FILE}")
    if meta.get("format") != FORMAT or not isinstance(meta.get("model"), dict):
        raise ModelFormatError(f"{path}: expected {{\"format\": \"{FORMAT}\", \"model\": {{...}}}}")
    if meta.get("version") != VERSION:
        raise ModelFormatError(f"{path}: format version {meta.get('version')!r}, this build reads {VERSION}")
    try:
        cfg = coerce(meta["model"], ModelConfig, "model", str(path)).resolve()
        validate_config(Config(model=cfg, data=DataConfig(seq_length=cfg.max_seq_len), source_file=str(path)))
    except ConfigError as e:
        raise ModelFormatError(str(e)) from None
    return cfg


def load_model(directory) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """-> (resolved ModelConfig, state dict on CPU). Checks names and shapes against the config."""
    from safetensors.torch import load_file

    directory = find_model_dir(directory)
    cfg = read_model_config(directory)
    path = directory / MODEL_FILE
    try:
        sd = load_file(str(path))
    except Exception as e:
        raise ModelFormatError(f"{path}: cannot read safetensors ({e})") from None
    check_state_dict(cfg, sd, str(path))
    return cfg, sd


def open_model(directory) -> tuple[ModelConfig, FileSource]:
    """-> (resolved ModelConfig, a source reading `model.safetensors` by slices); names and shapes are
    checked from the file's metadata (the padding, by whoever reads it: engine/weights.py)."""
    directory = find_model_dir(directory)
    cfg = read_model_config(directory)
    path = directory / MODEL_FILE
    src = FileSource([path], ModelFormatError)
    check_state_dict(cfg, {k: torch.empty(s, device="meta") for k, s in src.shapes().items()}, str(path))
    return cfg, src


def find_model_dir(path) -> Path:
    """The model directory itself, a training checkpoint holding one as `model/`, or a run / checkpoints
    directory whose `latest` marker names such a checkpoint."""
    p = Path(path)
    if not p.is_dir():
        raise ModelFormatError(f"{p}: not a directory")
    cands = [p, p / "model"]
    for marker in (p / "latest", p / "checkpoints" / "latest"):
        if marker.is_file():
            cands.append(marker.parent / marker.read_text().strip() / "model")
    for cand in cands:
        if (cand / CONFIG_FILE).is_file() and (cand / MODEL_FILE).is_file():
            return cand
    raise ModelFormatError(
        f"{p}: no {MODEL_FILE} + {CONFIG_FILE} here, in {p / 'model'}, or in the checkpoint a 'latest' marker names"
    )


def check_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor], where: str) -> None:
    """Names as the serial model's; each tensor covers its true shape, with only zeros beyond it."""
    want = serial_layout(cfg)
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    if missing:
        raise ModelFormatError(
            f"{where}: missing tensor {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if extra:
        raise ModelFormatError(
            f"{where}: unexpected tensor {extra[0]!r} for this model config"
            + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    for k, (shape, true) in want.items():
        problem = fit_problem(sd[k], true, shape)
        if problem:
            raise ModelFormatError(f"{where}: tensor {k!r} {problem}")


def build_model(cfg: ModelConfig, sd: dict[str, torch.Tensor], device="cpu", dtype: torch.dtype | None = None):
    """A serial `Transformer` holding these weights (eval mode)."""
    model = Transformer(cfg)
    model.load_state_dict(refit_state(sd, serial_layout(cfg)))
    model.to(device=device, dtype=dtype)
    return model.eval()
