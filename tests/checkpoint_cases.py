"""Shared pieces of the checkpoint tests: runs of the tiny model of `parallel_cases` that save at
step 3 and resume on another layout, on real gloo ranks, plus offline reads of whole checkpoints.

Two checks per reshard: (1) exact, the state loaded on layout B equals the one saved on layout A
bit for bit (B saves again right after loading; both checkpoints read offline must be identical:
masters and Adam moments, whatever the layouts); (2) steps 4-6 on B equal the uninterrupted A run
within the layout-equivalence tolerance of `parallel_cases` (RTOL, measured there)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from megacrystal.checkpoint import Checkpointer
from megacrystal.checkpoint.dcp import PieceLoadPlanner, Pieces, SafeFileSystemReader
from megacrystal.checkpoint.layout import Piece
from megacrystal.engine.engine import Engine
from tests.parallel_cases import LR, RTOL, data, make_cfg, rank_batches, state_problems

STEPS, SAVE_AT = 6, 3


def batches(steps: int = STEPS) -> list[dict]:
    return data(steps=steps)


def _step(engine, cfg, batch) -> float:
    g = engine.grid
    return engine.train_step(rank_batches(batch, g, cfg.train.micro_batch_size), LR)["loss"]


def save_run(overrides: list[str], out_dir: str, bs: list[dict], async_save: bool = True) -> dict:
    """Uninterrupted run of every batch, checkpointing after step SAVE_AT; losses + final state."""
    cfg = make_cfg(overrides)
    engine = Engine(cfg, torch.device("cpu"))
    ck = Checkpointer(engine, out_dir, async_save=async_save)
    losses = []
    for i, b in enumerate(bs):
        losses.append(_step(engine, cfg, b))
        if i + 1 == SAVE_AT:
            ck.save(SAVE_AT, {})
    ck.close()
    return dict(losses=losses, state=engine.full_model_state())


def resume_run(overrides: list[str], ckpt: str, resave_dir: str, bs: list[dict]) -> dict:
    """Load `ckpt` on this layout, save it again at once (for the exact check), run the rest."""
    cfg = make_cfg(overrides)
    engine = Engine(cfg, torch.device("cpu"))
    ck = Checkpointer(engine, resave_dir, async_save=False)
    meta = ck.load(ckpt)
    ck.save(meta["step"], {})
    losses = [_step(engine, cfg, b) for b in bs[meta["step"] :]]
    ck.close()
    return dict(losses=losses, state=engine.full_model_state(), step=engine.optimizer.step_count)


def run_jobs(rank: int, world: int, jobs: list[tuple]) -> list:
    """Rank entry point: ("save", overrides, out_dir) / ("resume", overrides, ckpt, resave_dir) in turn."""
    bs = batches()
    out = []
    for job in jobs:
        if job[0] == "save":
            out.append(save_run(job[1], job[2], bs))
        else:
            out.append(resume_run(job[1], job[2], job[3], bs))
    return out


def read_all(ckpt) -> dict[str, torch.Tensor]:
    """Every model/optimizer tensor of a checkpoint, whole, read offline."""
    reader = SafeFileSystemReader(str(ckpt))
    md = reader.read_metadata()
    state = {
        k: Pieces(tuple(v.size), [Piece((0,) * len(v.size), torch.empty(tuple(v.size), dtype=v.properties.dtype))])
        for k, v in md.state_dict_metadata.items()
        if not k.startswith("rng/")
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, storage_reader=reader, planner=PieceLoadPlanner(), no_dist=True)
    return {k: v.pieces[0].tensor for k, v in state.items()}


def exact_problems(label: str, a_dir, b_dir) -> list[str]:
    a, b = read_all(Path(a_dir)), read_all(Path(b_dir))
    if set(a) != set(b):
        return [f"{label}: keys differ {sorted(set(a) ^ set(b))[:4]}"]
    return [f"{label}: {k} not bitwise equal after the reshard" for k in a if not torch.equal(a[k], b[k])]


def _loss_problems(label, ref, got, rtol):
    return [
        f"{label}: step {4 + i} loss {b!r} vs uninterrupted {a!r}"
        for i, (a, b) in enumerate(zip(ref[3:], got, strict=True))
        if abs(a - b) > rtol * abs(a)
    ]


def resume_problems(label, tmp, a_name, b_name, a_res, b_res, cfg_overrides, rtol=RTOL, state_rtol=RTOL):
    """Layout A's run saved at step 3 into tmp/a_name; layout B resumed it into tmp/b_name: the state B
    loaded is A's bit for bit, and B's steps 4-6 and final weights equal A's within `rtol`/`state_rtol`."""
    problems = exact_problems(
        label, tmp / a_name / "checkpoints/step_00000003", tmp / b_name / "checkpoints/step_00000003"
    )
    problems += _loss_problems(label, a_res["losses"], b_res["losses"], rtol)
    if b_res["step"] != STEPS:
        problems.append(f"{label}: optimizer step {b_res['step']} after resuming, expected {STEPS}")
    problems += state_problems(label, a_res["state"], b_res["state"], make_cfg(cfg_overrides).model, rtol=state_rtol)
    return problems
