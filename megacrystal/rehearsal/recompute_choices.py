"""What each `model.recompute` choice keeps, measured: the rehearsed layout under none, selective and
full, each layer shape played on meta once (plan_costs.py: 1 and 2 layers, cached on disk) and
composed on the layout's schedule by the planner (activations of the fullest pipeline rank, its
memory, whether it fits the GPU, the simulated step). The rehearsed choice is marked; the rehearsal's
own per-rank figures above are the whole launch's."""

from __future__ import annotations

from ..config import load_config
from ..planner import hardware
from ..planner.search import recompute_choices_of, recompute_text
from ..planner.shapes import Layout, recompute_of
from .plan_costs import RehearsalCosts


def layout_of(cfg, rec: dict) -> Layout:
    lay = rec["layout"]
    return Layout(
        tp=lay["tp"],
        pp=lay["pp"],
        vpp=lay["vpp"],
        dp=lay["dp"],
        sp=bool(lay["sequence_parallel"]),
        dist_opt=bool(lay["distributed_optimizer"]) and lay["dp"] * lay["cp"] > 1,
        mbs=cfg.train.micro_batch_size,
        recompute=recompute_of(cfg.model),
        order=lay["order"],
        cp=lay["cp"],
    )


def choices(config: str, overrides: list[str], rec: dict, gpu: str, jobs: int = 2) -> list[dict]:
    """One row per recompute choice (planner/search.py `recompute_choices_of`), from rehearsed records."""
    cfg = load_config(str(config), list(overrides))
    return recompute_choices_of(cfg, layout_of(cfg, rec), hardware.get(gpu), RehearsalCosts(cfg, jobs=jobs))


def text(rows: list[dict]) -> list[str]:
    return recompute_text(rows, "; each layer shape rehearsed on meta, composed on the schedule")
