"""Hugging Face interop: `megacrystal export-hf` and `megacrystal import-hf`.

    megacrystal export-hf --checkpoint DIR --format {crystalcoder,llama} --output DIR [--dtype D]
    megacrystal export-hf --checkpoint RUN --all --format F --output DIR   # DIR/step_N/ per kept checkpoint
    megacrystal import-hf --hf DIR --output DIR [--dtype D]

A checkpoint here is a training checkpoint (DCP, read offline; a run directory means its newest intact
one) or a consolidated model directory of `model/serialization.py`; checkpoints are read by
`checkpoint/reader.py`. The HF side is config.json + safetensors (one file, or shards + index above
--max-shard-size) + the tokenizer file and a tokenizer_config.json; a crystalcoder export also carries
its modeling code (`hf/remote/`, named by `auto_map`). Import also reads PyTorch `pytorch_model*.bin`
files (weights only). Layouts: `hf/layouts.py`. An export of a training checkpoint carries its step,
tokens seen and phase in config.json's "megacrystal" entry; `--all`: hf/export_all.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..atomic_io import atomic_write
from ..checkpoint.format import CheckpointError
from ..checkpoint.reader import read_checkpoint, resolve_checkpoint
from ..model.serialization import (
    ModelFormatError,
    copy_tokenizer,
    save_model,
    save_state_dict,
)
from .layout_common import serial_shapes
from .layouts import LAYOUTS, LayoutError
from .remote import write_remote_code
from .sliced import hf_source

DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class HFError(ValueError):
    """A bad HF directory or request; the message names the file."""


# ----------------------------------------------------------------------------- tokenizer facts


def tokenizer_ids(path: str | None) -> dict:
    """bos/eos ids and strings of a tokenizer file (HF json or SentencePiece), for config.json."""
    if path is None:
        return {"bos": 1, "eos": 2, "bos_token": None, "eos_token": None}
    from ..tokenizer import load_tokenizer

    tok = load_tokenizer(None, path)
    if path.endswith(".json"):
        bos = tok.backend.token_to_id("<s>")
        to_str = tok.backend.id_to_token
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=path)
        bos = sp.bos_id() if sp.bos_id() >= 0 else None
        to_str = sp.id_to_piece
    return {"bos": bos, "eos": tok.eod, "bos_token": None if bos is None else to_str(bos), "eos_token": to_str(tok.eod)}


def _tokenizer_config(path: Path, ids: dict, max_len: int) -> dict:
    cls = "PreTrainedTokenizerFast" if path.name == "tokenizer.json" else "LlamaTokenizer"
    out = {
        "tokenizer_class": cls,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    if cls == "LlamaTokenizer":  # encode exactly as SentencePiece does: a dummy "▁" only if the model adds one
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(path))
        out["legacy"] = False
        out["add_prefix_space"] = sp.encode("a", out_type=str)[0].startswith("\u2581")
    for k in ("bos_token", "eos_token"):
        if ids[k] is not None:
            out[k] = ids[k]
    if ids["eos_token"] is not None:  # batched generation: pad on the left with </s>, masked by the attention mask
        out["pad_token"] = ids["eos_token"]
        out["padding_side"] = "left"
    return out


# ----------------------------------------------------------------------------- HF files


def write_hf(out_dir, conf: dict, tensors: dict, tokenizer_path: str | None, max_shard_bytes: int) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{}]
    size = 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += n
    tok = copy_tokenizer(tokenizer_path, out)
    if tok is not None:
        ids = tokenizer_ids(str(tok))
        tc = _tokenizer_config(tok, ids, conf.get("n_positions") or conf.get("max_position_embeddings"))
        atomic_write(out / "tokenizer_config.json", (json.dumps(tc, indent=2) + "\n").encode())
    if len(shards) == 1:
        save_state_dict(out / "model.safetensors", shards[0])
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        weight_map = {}
        for name, shard in zip(names, shards, strict=True):
            save_state_dict(out / name, shard)
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write(out / "model.safetensors.index.json", (json.dumps(index, indent=2) + "\n").encode())
    if conf.get("eos_token_id") is not None:  # generate() pads finished rows with </s> without being told
        gen = {k: conf.get(k) for k in ("bos_token_id", "eos_token_id")} | {"pad_token_id": conf["eos_token_id"]}
        atomic_write(out / "generation_config.json", (json.dumps(gen, indent=2) + "\n").encode())
    atomic_write(out / "config.json", (json.dumps(conf, indent=2) + "\n").encode())
    return out


def hf_to_model(hf_dir) -> tuple:
    """Read an HF directory into (ModelConfig, our state dict, tokenizer file or None): the whole model
    in this process (`hf/sliced.py` `hf_source` reads it by slices instead)."""
    cfg, src, tok = hf_source(hf_dir, HFError)
    try:
        sd = serial_shapes(cfg, src.read_all())
    except LayoutError as e:
        raise HFError(str(e)) from None
    return cfg, sd, tok


# ----------------------------------------------------------------------------- export / import


def _cast(sd: dict, dtype: torch.dtype | None) -> dict:
    return sd if dtype is None else {k: v.to(dtype) for k, v in sd.items()}


def training_meta(checkpoint) -> tuple[Path | None, dict | None]:
    """(the training checkpoint directory, {step, tokens, phase, checkpoint}) of a checkpoint or run
    directory; (None, None) for a consolidated model directory."""
    from ..checkpoint.files import trainer_meta

    try:
        ckpt = resolve_checkpoint(checkpoint)
        meta = trainer_meta(ckpt)
    except CheckpointError:
        return None, None
    return ckpt, {
        "step": meta.get("step"),
        "tokens": meta.get("tokens"),
        "phase": meta.get("phase"),
        "checkpoint": ckpt.name,
    }


def export_hf(checkpoint, fmt: str, output, dtype: torch.dtype | None = None, max_shard_bytes: int = 5 * 2**30) -> Path:
    if fmt not in LAYOUTS:
        raise HFError(f"--format: expected one of {sorted(LAYOUTS)}, got {fmt!r}")
    ckpt, meta = training_meta(checkpoint)
    cfg, sd, tok = read_checkpoint(ckpt or checkpoint)
    make_config, convert, _ = LAYOUTS[fmt]
    ids = tokenizer_ids(tok)
    sd = _cast(sd, dtype)
    try:
        if fmt == "llama":
            name = _DTYPE_NAMES.get(next(iter(sd.values())).dtype, "float32")
            conf = make_config(cfg, ids["bos"], ids["eos"], name)
        else:
            conf = make_config(cfg, ids["bos"], ids["eos"])
        tensors = convert(cfg, sd)
    except LayoutError as e:
        raise HFError(str(e)) from None
    if meta is not None:
        conf["megacrystal"] = meta
    out = write_hf(output, conf, tensors, tok, max_shard_bytes)
    if fmt == "crystalcoder":  # the modeling code `auto_map` names (trust_remote_code)
        write_remote_code(out)
    return out


def import_hf(hf_dir, output, dtype: torch.dtype | None = None) -> Path:
    cfg, sd, tok = hf_to_model(hf_dir)
    return save_model(output, cfg, _cast(sd, dtype), tokenizer_path=tok)


def _size(text: str) -> int:
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "B": 1}
    t = text.strip().upper()
    for u, mult in units.items():
        if t.endswith(u):
            try:
                return int(float(t[: -len(u)]) * mult)
            except ValueError:
                break
    raise argparse.ArgumentTypeError(f"expected a size like 5GB or 500MB, got {text!r}")


# the same words as in `megacrystal --help` (cli.py COMMANDS; tests/test_cli_help.py checks it)
EXPORT_HELP = "run, checkpoint or model directory -> HF directory (crystalcoder or llama layout)"
IMPORT_HELP = "HF directory (crystalcoder or llama layout) -> model directory"


def _run(fn, prog: str) -> int:
    try:
        out = fn()
    except (HFError, ModelFormatError, LayoutError, CheckpointError) as e:
        print(f"megacrystal {prog}: {e}", file=sys.stderr)
        return 1
    print(f"megacrystal {prog}: wrote {out}")
    return 0


def export_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal export-hf", description=EXPORT_HELP)
    ap.add_argument("--checkpoint", required=True, help="run dir, checkpoint dir, or model directory")
    ap.add_argument("--format", required=True, choices=sorted(LAYOUTS), help="the HF layout to write")
    ap.add_argument("--output", required=True, help="the HF directory to write")
    ap.add_argument("--dtype", default="keep", choices=sorted(DTYPES), help="tensor dtype written (keep: as stored)")
    ap.add_argument("--max-shard-size", type=_size, default=5 * 2**30, help="e.g. 5GB (default)")
    ap.add_argument(
        "--all",
        action="store_true",
        help="every kept checkpoint of the run into OUTPUT/step_N/ (existing ones skipped)",
    )
    a = ap.parse_args(argv)
    if a.all:
        from .export_all import export_all

        def every():
            written = export_all(a.checkpoint, a.format, a.output, DTYPES[a.dtype], a.max_shard_size)
            return f"{len(written)} new folder(s) in {a.output}"

        return _run(every, "export-hf")
    return _run(lambda: export_hf(a.checkpoint, a.format, a.output, DTYPES[a.dtype], a.max_shard_size), "export-hf")


def import_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal import-hf", description=IMPORT_HELP)
    ap.add_argument("--hf", required=True, help="HF model directory (crystalcoder or llama)")
    ap.add_argument("--output", required=True, help="the model directory to write")
    ap.add_argument("--dtype", default="keep", choices=sorted(DTYPES), help="tensor dtype written (keep: as stored)")
    a = ap.parse_args(argv)
    return _run(lambda: import_hf(a.hf, a.output, DTYPES[a.dtype]), "import-hf")
