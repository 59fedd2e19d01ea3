"""Setting an engine's weights from a serial-named source, each rank reading only what it keeps.

The source (model/weight_source.py: tensors in memory, safetensors files, an HF directory) names
the serial model's tensors; every rank checks the names and stored shapes (metadata, the same on
every rank), then reads, per parameter it holds, the block of the stored tensor its piece covers:
the true part, and the stored padding inside its piece, which must be zero. Nobody reads or
receives the whole model. The ranks agree on success with one all-reduce, so a bad tensor seen by
one rank fails every rank instead of leaving the others waiting in the next collective.
"""

from __future__ import annotations

import torch

from ..model.padding import fit_problem, local_true_box
from ..model.param_spec import param_spec
from ..model.transformer import serial_layout
from ..model.weight_source import DictSource, WeightSource
from ..parallel import collectives as C


@torch.no_grad()
def load_weights(engine, source: WeightSource | dict | None) -> None:
    """Set `engine`'s parameters (and the optimizer's masters) from `source` on every rank; raises
    ValueError (on every rank) when a name, shape or padding is wrong anywhere."""
    if isinstance(source, dict):
        source = DictSource(source)
    problem = None
    try:
        _load(engine, source)
    except ValueError as e:
        problem = str(e)
    g = engine.grid
    bad = 1.0 if problem else 0.0
    if g.world_size > 1:
        flag = torch.tensor([bad], device=engine.device)
        C.all_reduce(flag, g.world)
        bad = float(flag.item())
    if problem:
        raise ValueError(f"load_full_model_state: {problem}")
    if bad:
        raise ValueError(f"load_full_model_state: {int(bad)} rank(s) could not load their weights (see their error)")
    if engine.optimizer is not None:
        engine.optimizer.reload_masters()


def _load(engine, source: WeightSource | None) -> None:
    if source is None:
        raise ValueError("no weights given on this rank (every rank passes its source; it reads only its part)")
    layout = serial_layout(engine.cfg.model)
    stored = source.shapes()
    missing = sorted(set(layout) - set(stored))
    extra = sorted(set(stored) - set(layout))
    if missing or extra:
        raise ValueError(f"keys differ from the model's (missing {missing[:5]}, unexpected {extra[:5]})")
    for n, (shape, true) in layout.items():
        have = stored[n]
        if len(have) != len(true) or any(a < b for a, b in zip(have, true, strict=True)):
            raise ValueError(f"{n} has shape {have}, expected {shape}")
    for m in engine.chunks:
        for n, p in m.named_parameters():
            spec = param_spec(p)
            key = (spec.seed_name or n) if spec.tied_copy else n
            _load_piece(p, source, key, stored[key], n)


def _load_piece(p: torch.Tensor, source: WeightSource, key: str, stored: tuple, name: str) -> None:
    start, size = local_true_box(p)
    # the stored tensor inside this piece: its true part plus any stored padding there (checked zero)
    extent = tuple(max(0, min(a + n, s) - a) for a, n, s in zip(start, p.shape, stored, strict=True))
    block = source.read(key, start, extent)
    if tuple(block.shape) != extent:
        raise ValueError(f"{key}: read a block of shape {tuple(block.shape)}, expected {extent}")
    problem = fit_problem(block, size)
    if problem:
        raise ValueError(f"{name} (from {key}) {problem}")
    mine = p[tuple(slice(0, n) for n in size)]
    if mine.numel() < p.numel():
        p.zero_()
    if mine.numel():
        mine.copy_(block[tuple(slice(0, n) for n in size)])
