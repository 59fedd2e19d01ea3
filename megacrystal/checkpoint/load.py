"""Loading a checkpoint into a live engine of any layout (collective over the ranks).

Each rank asks DCP for exactly the pieces its layout holds (`layout.local_pieces`, tied
copies included under their owner's name): fp32 masters, then the parameters are set from them
(all-gathered over dp with the distributed optimizer); Adam moments and the optimizer step when
wanted; the RNG states only when the layout is the one that saved them (they are per rank).
A checkpoint written at another `train.precision` is refused for a resume (it is fine for
`train.init_from`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from .dcp import PieceLoadPlanner, Pieces, SafeFileSystemReader, one_line
from .files import trainer_meta
from .format import TRAINER, CheckpointError
from .layout import MODEL, global_shapes, local_pieces, model_dict, rng_pieces

SHAPE_FIELDS = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size")


def load_engine_state(
    engine, path: Path, group=None, with_optimizer: bool = True, check_precision: bool = True, restore_rng: bool = True
) -> dict:
    """Every rank reads the pieces its layout needs: fp32 masters (then the parameters), Adam moments
    and the optimizer step when `with_optimizer`, the RNG states when the layout is unchanged."""
    meta = trainer_meta(path)
    where = path / TRAINER
    mine = engine.cfg.train.precision
    if check_precision and meta.get("precision") != mine:
        raise CheckpointError(
            f"{where}: written with train.precision={meta.get('precision')}, this run has {mine}; resuming "
            f"across precisions is refused (start a new run from its weights with train.init_from={path})"
        )
    want_model = model_dict(engine.cfg.model)
    saved = meta.get("model", {})
    for k in SHAPE_FIELDS:
        if k in saved and saved[k] != want_model[k]:
            raise CheckpointError(f"{where}: model.{k} is {saved[k]!r}, this run has {want_model[k]!r}")
    engine.sync_params()  # no parameter all-gather may still be writing what is loaded next
    pieces = local_pieces(engine)
    state = {}
    shapes = global_shapes(engine)
    for key, ps in pieces.items():
        if not with_optimizer and not key.startswith(MODEL):
            continue
        state[key] = Pieces(shapes[key], ps)
    g = engine.grid
    same_layout = restore_rng and meta.get("layout") == dict(g.layout(), world=g.world_size)
    if same_layout:
        rng = rng_pieces(engine)
        for key, ps in rng.items():
            state[key] = Pieces(tuple(ps[0].tensor.shape), ps)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(
                state,
                storage_reader=SafeFileSystemReader(path),
                planner=PieceLoadPlanner(),
                process_group=group,
                no_dist=group is None,
            )
    except (Exception, dcp.api.CheckpointException) as e:
        raise CheckpointError(f"{path}: cannot load ({one_line(e)})") from None
    _after_load(engine)
    if with_optimizer:
        engine.optimizer.step_count = int(meta.get("optimizer_step", meta.get("step", 0)))
    if same_layout:
        _restore_rng(engine, state)
    return meta


@torch.no_grad()
def _after_load(engine) -> None:
    """Parameters <- the loaded fp32 masters (all-gathered over dp with the distributed optimizer)."""
    opt = engine.optimizer
    if hasattr(opt, "gather_params"):  # ZeRO-1 and the fused optimizer: flat shards
        opt.gather_params()
        return
    for grp in opt.groups:
        for p, m in zip(grp["params"], grp["masters"], strict=True):
            if p is not m:
                p.copy_(m)


def _restore_rng(engine, state: dict) -> None:
    r = engine.grid.rank
    get = {k.rsplit("/", 1)[1]: v.pieces[0].tensor for k, v in state.items() if k.startswith(f"rng/rank{r}/")}
    if "torch" in get:
        torch.set_rng_state(get["torch"])
    if "cuda" in get and engine.device.type == "cuda":
        torch.cuda.set_rng_state(get["cuda"], engine.device)
