"""Play one rank of the launch: `megacrystal train`'s own `train(cfg)` in a fake world of N ranks.

The process group is torch's `fake` backend registered for the meta device only (`meta:fake`, as NCCL
is for CUDA), started with a `FakeStore`; torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) is
set as a launch sets it. Everything runs under the rehearsal's dispatch mode (meta_mode.py), its
torch.distributed layer (comms.py) and a saved-tensors hook that marks activations.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback

import torch
import torch.distributed as dist

from .comms import Comms
from .findings import Finding
from .frames import ours, relative
from .meta_mode import MetaMode
from .play_state import PlayState

GPUS_PER_NODE = 8


def fake_store():
    try:
        from torch.testing._internal.distributed.fake_pg import FakeStore
    except ImportError as e:  # pragma: no cover - depends on the torch build
        raise RuntimeError(
            f"megacrystal rehearse needs torch's fake process group (torch.testing._internal.distributed."
            f"fake_pg.FakeStore), which this torch {torch.__version__} lacks ({e})"
        ) from None
    return FakeStore()


def _env(rank: int, world: int) -> dict:
    return dict(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank % GPUS_PER_NODE),
        LOCAL_WORLD_SIZE=str(min(world, GPUS_PER_NODE)),
        MASTER_ADDR="rehearsal.invalid",
        MASTER_PORT="1",
    )


def _crash_frame(e: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if ours(f.filename)]
    shown = [f"{relative(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames[-3:])]
    return " <- ".join(shown) if shown else "(outside megacrystal)"


def play_rank(config_path: str, rank: int, world: int, coords: dict, group_names: dict, out_root: str) -> dict:
    """Play `rank`; returns its record (plain data, picklable)."""
    from ..config import load_config
    from ..parallel import collectives as C
    from ..parallel import host, state
    from ..train.loop import train

    t0 = time.perf_counter()
    play = PlayState(rank, coords)
    out_dir = tempfile.mkdtemp(prefix=f"rank{rank}-", dir=out_root)
    saved_env = {k: os.environ.get(k) for k in _env(rank, world)}
    os.environ.update(_env(rank, world))
    cfg = load_config(config_path, [f"train.out_dir={out_dir}"])
    comms = Comms(play, group_names)
    if world > 1:  # as a launch: one process starts no process group (parallel/init.py)
        dist.init_process_group("meta:fake", store=fake_store(), rank=rank, world_size=world)
        comms.group(None)
    old_stand_in = host.set_stand_in(play.stand_in)
    kinds = comms.handle_kinds
    C.observe(kinds)
    try:
        with comms.installed(), MetaMode(play), torch.autograd.graph.saved_tensors_hooks(_pack(play), _unpack):
            try:
                train(cfg)
            except Exception as e:  # the launch would die here: a finding, with its frame
                msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                play.findings.append(Finding("crash", rank, f"{type(e).__name__}: {msg}", _crash_frame(e)))
    finally:
        C.unobserve(kinds)
        host.set_stand_in(old_stand_in)
        try:
            state.destroy(timeout_s=0.0)  # also forgets the grid of a one-process play
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(out_dir, ignore_errors=True)
    play._set(play.section)  # close the last section's time
    return _result(play, comms, time.perf_counter() - t0)


def _pack(play):
    def pack(t):
        play.memory.mark(t, "activations")
        return t

    return pack


def _unpack(t):
    return t


def _result(play: PlayState, comms: Comms, seconds: float) -> dict:
    return dict(
        groups={g["id"]: dict(name=g["name"], ranks=list(g["ranks"])) for g in comms.groups.values()},
        rank=play.rank,
        coords=play.coords,
        seconds=round(seconds, 2),
        section_seconds={k: round(v, 2) for k, v in play.timing.items()},
        steps=play.steps,
        memory=play.memory.summary(),
        flops={s: dict(v) for s, v in play.flops.items()},
        other_bytes=dict(play.other_bytes),
        ops=dict(play.ops),
        host_reads={s: [list(r) for r in v] for s, v in play.host_reads.items()},
        d2h_bytes=dict(play.d2h_bytes),
        findings=[f.to_dict() for f in play.findings],
        collectives=play.collectives,
        p2p=play.p2p,
        checkpoint=play.checkpoint,
        engine=play.engine_facts,
    )
