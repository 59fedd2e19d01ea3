"""Start torch.distributed from torchrun's environment, after checking the config against it.

    grid, device = init_distributed(cfg)

Reads WORLD_SIZE, RANK, LOCAL_RANK (and torchrun's MASTER_ADDR/MASTER_PORT); checks the grid
rules of the config against WORLD_SIZE *before* `init_process_group`, so a bad launch fails at once with a
one-line error instead of hanging in a collective; picks NCCL on CUDA and gloo on CPU
(`parallel.backend` may force one, or pick the test-only `cuda:gloo`); puts the process on cuda:LOCAL_RANK. Without WORLD_SIZE (a
plain `python` run) it is a world of one and no process group is created.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import Config, ConfigError, validate_world
from ..log import get_logger
from .state import Grid, build_grid

# Test-only (benchmarks/gpu_check.sh): gloo registered for CUDA tensors alone, so, as with NCCL, a host
# tensor in a training collective fails; ranks may share one GPU (cuda:LOCAL_RANK % device count).
TEST_BACKEND = "cuda:gloo"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment {name}={raw!r}: expected an integer (as torchrun sets it)") from None


def pick_device(cfg: Config, local_rank: int) -> torch.device:
    want = cfg.train.device
    if want == "meta":  # a rehearsal (megacrystal rehearse): tensors with shapes and no values
        return torch.device("meta")
    has_cuda = torch.cuda.is_available()
    if want == "cuda" and not has_cuda:
        raise ConfigError("train.device: cuda requested but torch sees no CUDA device")
    if want == "cpu" or (want == "auto" and not has_cuda):
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if cfg.parallel.backend == TEST_BACKEND:  # test-only: several ranks may share a GPU
        return torch.device("cuda", local_rank % n)
    if local_rank >= n:
        raise ConfigError(
            f"environment LOCAL_RANK={local_rank}: only {n} CUDA device(s) on this node "
            f"(start at most {n} processes per node)"
        )
    return torch.device("cuda", local_rank)


def pick_backend(cfg: Config, device: torch.device) -> str:
    b = cfg.parallel.backend
    if b == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if b in ("nccl", TEST_BACKEND) and device.type != "cuda":
        raise ConfigError(f"parallel.backend: {b} needs CUDA devices (use gloo or auto on CPU)")
    return b


def init_distributed(cfg: Config, timeout_s: float | None = None) -> tuple[Grid, torch.device]:
    """`timeout_s` (default `parallel.timeout_s`): how long any collective may wait before it fails."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1:
        raise ConfigError(f"environment WORLD_SIZE={world}: expected >= 1")
    if not 0 <= rank < world:
        raise ConfigError(f"environment RANK={rank}: expected 0 <= RANK < WORLD_SIZE={world}")
    if local_rank < 0:
        raise ConfigError(f"environment LOCAL_RANK={local_rank}: expected >= 0")
    validate_world(cfg, world)  # the field rules were checked by load_config
    device = pick_device(cfg, local_rank)
    backend = pick_backend(cfg, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if device.type == "meta" and world > 1 and not dist.is_initialized():
        raise ConfigError("train.device: meta runs under `megacrystal rehearse`, which starts the (fake) process group")
    if world > 1 and not dist.is_initialized():
        for k in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(k):
                raise ConfigError(f"environment {k}: not set (launch with torchrun, which sets it)")
        kw = dict(device_id=device) if backend == "nccl" else {}
        timeout = timedelta(seconds=cfg.parallel.timeout_s if timeout_s is None else timeout_s)
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout, **kw)
    grid = build_grid(cfg, checked=True)
    log = get_logger("megacrystal.parallel")
    log.info(f"{grid.describe()} backend {grid.backend or 'none'} device {device}")
    if (
        rank == 0
        and _env_int("TORCHELASTIC_MAX_RESTARTS", 0) > 0
        and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    ):
        log.warning(
            "torchrun --max-restarts with its shared rendezvous store: restarted workers can read the previous "
            "round's addresses and fail to connect; launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"
        )
    return grid, device
