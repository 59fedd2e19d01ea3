"""Where this rank's model and optimizer state sit inside the serial model's tensors.

A checkpoint stores every tensor under the serial model's name at its *true* shape (no vocabulary or
FFN padding, which differs between tensor-parallel sizes): `model/<name>` holds the fp32 master
weights, `optim/exp_avg/<name>` and `optim/exp_avg_sq/<name>` Adam's moments. Each rank contributes
rectangular pieces of them, with their offsets in the global tensor; torch.distributed.checkpoint
(DCP) records the pieces in its metadata and, on load, reads whatever overlaps the pieces the new
layout asks for. This module is the only hand-written part: the map from this engine's shards to
global offsets.

- Tensor parallelism: a shard is a contiguous block of rows (dim 0) or columns (dim 1) of the padded
  tensor, starting at tp_rank * its size along that dimension.
- The distributed optimizer (ZeRO-1) keeps a flat slice [a, z) of each parameter's shard; of a 2-D
  shard that is up to three rectangles: the tail of a first row, whole rows, the head of a last row.
  It shards over the replicas, dp x cp (`GradBuffers.shard_range`): context parallelism splits the
  sequence, never a parameter, so a cp rank's pieces are those of a data-parallel replica and a
  checkpoint moves between cp sizes as between dp sizes (the loader cursor counts global samples,
  which every cp rank reads alike).
- Padding beyond the true shape is cut off; a tied-embedding copy (last pipeline stage) is not saved
  and loads from the embedding's name; replicas (dp without ZeRO, norms over tp) offer identical
  pieces and DCP's planner keeps one of each, spreading the writes over the ranks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..model.padding import full_shape, true_shape
from ..model.param_spec import param_spec

MODEL, EXP_AVG, EXP_AVG_SQ = "model/", "optim/exp_avg/", "optim/exp_avg_sq/"
KINDS = (MODEL, EXP_AVG, EXP_AVG_SQ)


@dataclass
class Piece:
    """A rectangle of a checkpoint tensor held by this rank: offsets in the global tensor, a view."""

    offsets: tuple
    tensor: torch.Tensor
    tied_copy: bool = False


@dataclass(frozen=True)
class ShardFacts:
    """How one local parameter relates to the serial model's tensor of the same name."""

    name: str  # serial state-dict name whose values this parameter holds
    tied_copy: bool  # a copy of another parameter (saved under `name` by its owner)
    shard_dim: int | None  # tensor-parallel split dimension, None when replicated over tp
    tp_rank: int
    full_shape: tuple  # unsharded, padded
    true_shape: tuple  # unsharded, without padding


def shard_facts(p: torch.Tensor, local_name: str, tp_rank: int) -> ShardFacts:
    """The one place that reads the engine's per-parameter sharding facts (`ParamSpec`)."""
    spec = param_spec(p)
    name = (spec.seed_name or local_name) if spec.tied_copy else local_name
    dim = spec.shard_dim
    return ShardFacts(name, spec.tied_copy, dim, tp_rank if dim is not None else 0, full_shape(p), true_shape(p))


def flat_boxes(shape: tuple, a: int, z: int) -> list[tuple[tuple, tuple, int]]:
    """The flat range [a, z) of a row-major tensor of `shape` (1-D or 2-D) as rectangles:
    [(offsets, sizes, start in the range)], each one contiguous in memory."""
    if a >= z:
        return []
    if len(shape) == 1:
        return [((a,), (z - a,), 0)]
    if len(shape) != 2:
        raise ValueError(f"checkpoint layout: {len(shape)}-D parameters are not supported")
    cols = shape[1]
    out = []
    pos = a
    r0, c0 = divmod(a, cols)
    if c0:  # tail of the first row
        n = min(cols - c0, z - a)
        out.append(((r0, c0), (1, n), 0))
        pos += n
    rows = (z - pos) // cols
    if rows:  # whole rows
        out.append(((pos // cols, 0), (rows, cols), pos - a))
        pos += rows * cols
    if pos < z:  # head of the last row
        out.append(((pos // cols, 0), (1, z - pos), pos - a))
    return out


def global_pieces(
    facts: ShardFacts, local_shape: tuple, flat: torch.Tensor, a: int
) -> list[tuple[tuple, torch.Tensor]]:
    """Pieces (global offsets in the true-shaped tensor, view of `flat`) of the values `flat` holds:
    elements [a, a + len(flat)) of this rank's shard (shape `local_shape`), padding cut off."""
    out = []
    for offs, sizes, start in flat_boxes(tuple(local_shape), a, a + flat.numel()):
        view = flat[start : start + _prod(sizes)].view(sizes)
        goffs = list(offs)
        if facts.shard_dim is not None:
            goffs[facts.shard_dim] += facts.tp_rank * local_shape[facts.shard_dim]
        cut = []
        for d, (o, n) in enumerate(zip(goffs, sizes, strict=True)):
            hi = min(o + n, facts.true_shape[d])
            if hi <= o:
                break
            cut.append(slice(0, hi - o))
        else:
            out.append((tuple(goffs), view[tuple(cut)]))
    return out


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


def optimizer_ranges(engine):
    """(param, a, master, exp_avg, exp_avg_sq) for every stretch of optimizer state this rank holds:
    flat fp32 views of elements [a, a + len) of the parameter's local shard."""
    opt = engine.optimizer
    if hasattr(opt, "shards"):  # distributed optimizer: slices of the bucket buffers
        buf = opt.buf
        for b, s in zip(buf.buckets, opt.shards, strict=True):
            lo, hi = s["lo"], s["hi"]
            for p in b.params:
                off = buf.offset[id(p)]
                a, z = max(lo, off), min(hi, off + p.numel())
                if a < z:
                    views = [s[k][a - lo : z - lo] for k in ("master", "exp_avg", "exp_avg_sq")]
                    yield (p, a - off, *views)
        return
    for g in opt.groups:
        for p, m, ea, eas in zip(g["params"], g["masters"], g["exp_avg"], g["exp_avg_sq"], strict=True):
            yield p, 0, m.view(-1), ea.view(-1), eas.view(-1)


def local_pieces(engine) -> dict[str, list[Piece]]:
    """{checkpoint key: [Piece]} of everything this rank holds (tied copies included,
    under their owner's name: the caller drops them for a save)."""
    names = {id(p): n for m in engine.chunks for n, p in m.named_parameters()}
    tp_rank = engine.grid.tp_rank
    out: dict[str, list] = {}
    for p, a, master, ea, eas in optimizer_ranges(engine):
        facts = shard_facts(p, names[id(p)], tp_rank)
        if len(facts.true_shape) > 2:
            raise ValueError(f"checkpoint layout: {facts.name} is {len(facts.true_shape)}-D")
        for kind, flat in zip(KINDS, (master, ea, eas), strict=True):
            key = kind + facts.name
            for offs, view in global_pieces(facts, tuple(p.shape), flat, a):
                out.setdefault(key, []).append(Piece(offs, view, facts.tied_copy))
    return out


def global_shapes(engine) -> dict[str, tuple]:
    """{checkpoint key: true (global) shape} for every key this rank holds."""
    names = {id(p): n for m in engine.chunks for n, p in m.named_parameters()}
    out = {}
    for m in engine.chunks:
        for p in m.parameters():
            facts = shard_facts(p, names[id(p)], engine.grid.tp_rank)
            for kind in KINDS:
                out[kind + facts.name] = tuple(facts.true_shape)
    return out


def rng_pieces(engine) -> dict[str, list[Piece]]:
    """This rank's random states as uint8 tensors, keyed by global rank (restored on the same layout)."""
    r = engine.grid.rank
    states = {"torch": torch.get_rng_state()}
    if engine.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(engine.device)
    return {f"rng/rank{r}/{k}": [Piece((0,), v.to("cpu").contiguous())] for k, v in states.items()}


def model_dict(model_cfg) -> dict:
    """The model config as recorded in trainer.json."""
    return dataclasses.asdict(model_cfg)
