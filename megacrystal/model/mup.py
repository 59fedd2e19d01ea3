"""muP as Crystal uses it: truncated-normal init (±2σ) and optimizer parameter groups.

    σ_embedding = init_std (0.073)      σ_hidden = init_std·sqrt(m)      σ_output = σ_hidden / sqrt(2·layers)
    groups: embeddings LR×1 wd on; norms and biases LR×1 wd 0; other matrices LR×m wd on
with m = base_width / width (1 without muP). Init is seeded per parameter *name*, and each element's value
is a function of (seed, name, its index in the parameter's true shape) only (init_draw.py): a rank draws
exactly the slice it holds, on its own device, and any pipeline or tensor-parallel split of the model,
with any amount of padding (zero, see padding.py), holds the values of the serial model.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn as nn

from ..config import ModelConfig
from .init_draw import draw_box
from .padding import local_true_box, true_shape
from .param_spec import param_spec


def init_std(cfg: ModelConfig, kind: str) -> float:
    m = cfg.width_mult
    if kind == "embedding":
        return cfg.init_std
    hidden = cfg.init_std * math.sqrt(m)
    if kind == "hidden":
        return hidden
    if kind == "output":
        return hidden / math.sqrt(2 * cfg.num_layers)
    raise ValueError(f"no std for init kind {kind!r}")


def _seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def full_init(cfg: ModelConfig, name: str, kind: str, shape: tuple, seed: int) -> torch.Tensor:
    """The unsharded initial value of parameter `name` at its true `shape` (fp32, CPU)."""
    t = torch.empty(shape)
    _fill(t, cfg, name, kind, seed, shape, (0,) * len(shape))
    return t


def _fill(out: torch.Tensor, cfg: ModelConfig, name: str, kind: str, seed: int, true: tuple, start: tuple) -> None:
    if kind == "ones":
        out.fill_(1.0)
    elif kind == "zeros":
        out.zero_()
    else:
        draw_box(out, _seed(seed, name), init_std(cfg, kind), tuple(true), start)


@torch.no_grad()
def init_parameters(model: nn.Module, cfg: ModelConfig, seed: int) -> None:
    """Initialise every parameter from its metadata (see layers.py), in place on its device: each rank
    draws only the true part of its own piece; padding is zero."""
    for name, p in model.named_parameters():
        spec = param_spec(p)
        if spec.init is None:
            raise ValueError(f"parameter {name} has no init kind (ParamSpec.init)")
        start, size = local_true_box(p)
        mine = p[tuple(slice(0, n) for n in size)]
        if mine.numel() < p.numel():
            p.zero_()
        if mine.numel():
            _fill(mine, cfg, spec.seed_name or name, spec.init, seed, true_shape(p), start)


def param_groups(model: nn.Module, cfg: ModelConfig, weight_decay: float) -> list[dict]:
    """Optimizer groups with `lr_mult` (× the scheduled base LR) and weight decay."""
    m = cfg.width_mult
    groups = {"embedding": ([], 1.0, weight_decay), "no_decay": ([], 1.0, 0.0), "matrix": ([], m, weight_decay)}
    for _name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = param_spec(p).init
        if kind == "embedding":
            groups["embedding"][0].append(p)
        elif p.ndim < 2 or kind in ("ones", "zeros"):
            groups["no_decay"][0].append(p)
        else:
            groups["matrix"][0].append(p)
    return [dict(params=ps, lr_mult=lr_mult, weight_decay=wd, name=n) for n, (ps, lr_mult, wd) in groups.items() if ps]
