"""Training checkpoints: every rank's engine shard + the trainer's state + a consolidated model.

    out_dir/checkpoints/step_00000100/
        shard_tp{t}_pp{p}_dp{d}.pt   engine.state_dict() (dp > 0 only with the distributed optimizer)
        trainer.json                 step, phase, loader state, parallel layout, config
        model/                       model.safetensors + model_config.json (+ tokenizer): export-hf input
    out_dir/checkpoints/latest       name of the newest complete checkpoint (written last)

A checkpoint is written into `step_X.tmp/` and renamed once every rank has finished, so an
interrupted save never looks complete and never replaces the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from ..log import get_logger


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed here; the message names the file."""


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def checkpoint_root(out_dir: str) -> Path:
    return Path(out_dir) / "checkpoints"


def latest_checkpoint(out_dir: str) -> Path | None:
    root = checkpoint_root(out_dir)
    marker = root / "latest"
    if not marker.is_file():
        return None
    name = marker.read_text().strip()
    path = root / name
    if not (path / "trainer.json").is_file():
        raise CheckpointError(f"{marker}: names {name!r}, but {path}/trainer.json is missing")
    return path


def _layout(grid) -> dict:
    return dict(tp=grid.tp_size, pp=grid.pp_size, dp=grid.dp_size)


def _shard_name(grid) -> str:
    return f"shard_tp{grid.tp_rank}_pp{grid.pp_rank}_dp{grid.dp_rank}.pt"


def save_checkpoint(
    out_dir: str,
    step: int,
    engine,
    trainer_state: dict,
    cfg_dict: dict,
    tokenizer_path: str | None,
    distributed_optimizer: bool,
) -> Path:
    grid = engine.grid
    root = checkpoint_root(out_dir)
    name = f"step_{step:08d}"
    tmp, final = root / f"{name}.tmp", root / name
    rank0 = grid.rank == 0
    if rank0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    if grid.dp_rank == 0 or distributed_optimizer:
        torch.save(engine.state_dict(), tmp / _shard_name(grid))
    full = engine.full_model_state()  # collective: every rank takes part
    if rank0:
        from ..model.serialization import save_model

        save_model(tmp / "model", engine.cfg.model, full, tokenizer_path=tokenizer_path)
        meta = dict(
            step=step,
            layout=_layout(grid),
            distributed_optimizer=distributed_optimizer,
            config=cfg_dict,
            **trainer_state,
        )
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=1))
    _barrier()
    if rank0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        marker_tmp = root / "latest.tmp"
        marker_tmp.write_text(name)
        os.replace(marker_tmp, root / "latest")
        get_logger().info(f"saved checkpoint {final}")
    _barrier()
    return final


def load_checkpoint(path: Path, engine, distributed_optimizer: bool) -> dict:
    """Restore this rank's engine shard; returns the trainer state (trainer.json)."""
    grid = engine.grid
    meta_path = path / "trainer.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({e})") from None
    if meta.get("layout") != _layout(grid) or bool(meta.get("distributed_optimizer")) != distributed_optimizer:
        raise CheckpointError(
            f"{meta_path}: written with layout {meta.get('layout')} distributed_optimizer="
            f"{meta.get('distributed_optimizer')}, this run has {_layout(grid)} distributed_optimizer="
            f"{distributed_optimizer}; resume with the same parallel layout (or start a new out_dir and load "
            f"the weights with `megacrystal import-hf`/model init from {path / 'model'})"
        )
    if distributed_optimizer:
        shard = path / _shard_name(grid)
    else:
        shard = path / f"shard_tp{grid.tp_rank}_pp{grid.pp_rank}_dp0.pt"
    if not shard.is_file():
        raise CheckpointError(f"{shard}: shard file missing")
    try:
        sd = torch.load(shard, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{shard}: unreadable ({e})") from None
    engine.load_state_dict(sd)
    return meta
