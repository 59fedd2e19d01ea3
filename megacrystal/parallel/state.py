"""The TP x CP x PP x DP grid: which global ranks form each process group, built once, up front.

Ranks are laid out by reshaping `arange(world)`; `parallel.order` names the axes fastest-varying
first, tp innermost and context parallelism (cp) right after it. Megatron's default "tp-dp-pp" gives
rank = tp_rank + tp*(cp_rank + cp*(dp_rank + dp*pp_rank)), so a tensor-parallel group is a run of
adjacent ranks (one node's NVLink island), a cp ring the next-closest, and pipeline stages are furthest
apart. "tp-pp-dp" puts the pipeline inside the data-parallel replica instead.

Groups (all created on every rank, in one fixed order, before anything else talks):
    tp         same (cp, dp, pp): shards of one layer
    pp         same (tp, cp, dp): the stages of one pipeline
    dp         same (tp, cp, pp): replicas that see different samples
    mp         same (dp, cp): tp x pp, one whole model replica (grad-norm without the distributed optimizer)
    embedding  first and last pp stage of each pipeline (tied input/output embedding grads)
    cp         same (tp, dp, pp): the ranks that share each sequence (ring attention)
    dp_cp      same (tp, pp): dp x cp, the ranks that hold the same parameters and reduce gradients
               (the distributed optimizer shards over it); = dp when cp is 1, = cp when dp is 1
    world      everything
A group of one rank gets no process group at all: collectives on it are no-ops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import Config, ConfigError, validate_world

# order -> axis names from slowest to fastest varying (the reshape shape of arange(world))
ORDERS = {"tp-dp-pp": ("pp", "dp", "cp", "tp"), "tp-pp-dp": ("dp", "pp", "cp", "tp")}
AXES = ("pp", "dp", "cp", "tp")  # the index order of `rank_layout`


@dataclass
class Group:
    """One process group as seen from this rank: its members (global ranks) and our index in it."""

    name: str
    ranks: list[int]
    rank: int  # index of this process in `ranks`
    pg: object | None = None  # torch ProcessGroup; None when size == 1

    @property
    def size(self) -> int:
        return len(self.ranks)


@dataclass
class Grid:
    world_size: int
    rank: int
    tp_size: int
    pp_size: int
    dp_size: int
    vpp_size: int
    order: str
    tp: Group
    pp: Group
    dp: Group
    mp: Group
    embedding: Group
    world: Group
    cp: Group
    dp_cp: Group
    cp_size: int
    backend: str | None = None
    all_groups: list = field(default_factory=list, repr=False)

    # the names a trainer reads
    @property
    def tp_rank(self) -> int:
        return self.tp.rank

    @property
    def pp_rank(self) -> int:
        return self.pp.rank

    @property
    def dp_rank(self) -> int:
        return self.dp.rank

    @property
    def dp_group(self):
        return self.dp.pg

    @property
    def cp_rank(self) -> int:
        return self.cp.rank

    @property
    def replicas(self) -> Group:
        """The ranks that hold the same parameters: gradients are summed over them, the distributed
        optimizer shards over them (dp x cp; cp never shards a parameter)."""
        return self.dp_cp

    @property
    def is_first_stage(self) -> bool:
        return self.pp.rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp.rank == self.pp_size - 1

    @property
    def next_rank(self) -> int:
        """Global rank of the next pipeline stage (wraps around, for interleaving)."""
        return self.pp.ranks[(self.pp.rank + 1) % self.pp_size]

    @property
    def prev_rank(self) -> int:
        return self.pp.ranks[(self.pp.rank - 1) % self.pp_size]

    def layout(self) -> dict:
        out = dict(tp=self.tp_size, pp=self.pp_size, dp=self.dp_size, vpp=self.vpp_size, order=self.order)
        if self.cp_size > 1:  # absent at cp=1: layouts recorded before cp existed still compare equal
            out["cp"] = self.cp_size
        return out

    def describe(self) -> str:
        cp = f"cp {self.cp_rank}/{self.cp_size} " if self.cp_size > 1 else ""
        return (
            f"rank {self.rank}/{self.world_size}: tp {self.tp_rank}/{self.tp_size} {cp}"
            f"pp {self.pp_rank}/{self.pp_size} dp {self.dp_rank}/{self.dp_size} (order {self.order})"
        )


def rank_layout(world_size: int, tp: int, pp: int, order: str, cp: int = 1) -> torch.Tensor:
    """The rank grid as a [pp, dp, cp, tp]-indexed tensor of global ranks, whatever the order."""
    if order not in ORDERS:
        raise ConfigError(f"parallel.order: expected one of {sorted(ORDERS)}, got {order!r}")
    dp = world_size // (tp * cp * pp)
    sizes = {"tp": tp, "cp": cp, "pp": pp, "dp": dp}
    axes = ORDERS[order]
    grid = torch.arange(world_size).reshape([sizes[a] for a in axes])
    return grid.permute([axes.index(a) for a in AXES])  # -> [pp, dp, cp, tp]


def group_ranks(world_size: int, tp: int, pp: int, order: str, cp: int = 1) -> dict[str, list[list[int]]]:
    """Every group of every kind, as lists of global ranks, in the creation order."""
    g = rank_layout(world_size, tp, pp, order, cp)  # [pp, dp, cp, tp]
    P, D, C, T = g.shape
    out = {
        "tp": [g[p, d, c, :].tolist() for p in range(P) for d in range(D) for c in range(C)],
        "pp": [g[:, d, c, t].tolist() for d in range(D) for c in range(C) for t in range(T)],
        "dp": [g[p, :, c, t].tolist() for p in range(P) for c in range(C) for t in range(T)],
        "mp": [g[:, d, c, :].flatten().tolist() for d in range(D) for c in range(C)],
    }
    out["embedding"] = [sorted({r[0], r[-1]}) for r in out["pp"]]
    out["cp"] = [g[p, d, :, t].tolist() for p in range(P) for d in range(D) for t in range(T)]
    out["dp_cp"] = [g[p, :, :, t].flatten().tolist() for p in range(P) for t in range(T)]
    return out


# Subgroups made here, destroyed by `destroy()` before the default group.
_created: list = []
_current: Grid | None = None
_meetings = 0


def _new_group(ranks: list[int], timeout_s: float):
    pg = dist.new_group(ranks, timeout=timedelta(seconds=timeout_s))
    _created.append(pg)
    return pg


def build_grid(cfg: Config, world_size: int | None = None, rank: int | None = None, checked: bool = False) -> Grid:
    """Check the grid rules of `cfg` against the world (unless the caller just did: `checked`), then
    create every group. The field rules were checked when the config was loaded. Without an
    initialised default group the world must be 1 (a plain single-process run)."""
    global _current
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if not checked:
        validate_world(cfg, world_size)  # before any collective
    par = cfg.parallel
    if world_size > 1 and not initialised:
        raise ConfigError(
            f"parallel: world size {world_size} needs torch.distributed to be initialised "
            f"first (use megacrystal.parallel.init.init_distributed)"
        )
    cp = getattr(par, "cp", 1)
    dp = world_size // (par.tp * cp * par.pp)
    if (
        _current is not None
        and _current.world_size == world_size
        and _current.rank == rank
        and _current.layout() == _layout_of(par, cp, dp)
    ):
        return _current
    all_groups = group_ranks(world_size, par.tp, par.pp, par.order, cp)
    mine: dict[str, Group] = {}
    for kind in ("tp", "pp", "dp", "mp", "embedding", "cp"):
        for ranks in all_groups[kind]:
            # every rank creates every group (torch requires it), in the same order
            pg = _new_group(ranks, par.timeout_s) if len(ranks) > 1 else None
            if rank in ranks:
                mine[kind] = Group(kind, ranks, ranks.index(rank), pg)
        if kind == "embedding" and "embedding" not in mine:
            mine["embedding"] = Group("embedding", [rank], 0, None)  # a middle stage: not a member
    # dp x cp: the same ranks as dp (cp 1) or as cp (dp 1) share that group's process group
    same = mine["dp"] if cp == 1 else mine["cp"] if dp == 1 else None
    for ranks in all_groups["dp_cp"]:
        pg = same.pg if same is not None else _new_group(ranks, par.timeout_s) if len(ranks) > 1 else None
        if rank in ranks:
            mine["dp_cp"] = Group("dp_cp", ranks, ranks.index(rank), pg)
    world = Group("world", list(range(world_size)), rank, dist.group.WORLD if world_size > 1 else None)
    grid = Grid(
        world_size=world_size,
        rank=rank,
        tp_size=par.tp,
        pp_size=par.pp,
        dp_size=dp,
        vpp_size=par.vpp,
        order=par.order,
        tp=mine["tp"],
        pp=mine["pp"],
        dp=mine["dp"],
        mp=mine["mp"],
        embedding=mine["embedding"],
        world=world,
        cp=mine["cp"],
        dp_cp=mine["dp_cp"],
        cp_size=cp,
        backend=dist.get_backend() if initialised else None,
        all_groups=[mine[k] for k in ("tp", "pp", "dp", "mp", "embedding", "cp", "dp_cp")],
    )
    _current = grid
    return grid


def _layout_of(par, cp: int, dp: int) -> dict:
    out = dict(tp=par.tp, pp=par.pp, dp=dp, vpp=par.vpp, order=par.order)
    if cp > 1:
        out["cp"] = cp
    return out


def _meet(timeout_s: float) -> None:
    """Wait until every rank has arrived here (through the rendezvous store, at most `timeout_s`).
    A rank that closes its connections while a peer still finishes its last collective makes that
    peer's gloo thread abort the process; once all ranks are here, none has traffic in flight."""
    global _meetings
    try:
        store = dist.distributed_c10d._get_default_store()
    except Exception:
        return
    _meetings += 1
    key = f"megacrystal/destroy/{_meetings}"
    world = dist.get_world_size()
    deadline = time.monotonic() + timeout_s
    try:
        store.add(key, 1)
        while store.add(key, 0) < world and time.monotonic() < deadline:
            time.sleep(0.005)
    except Exception:  # a store that went away: tear down anyway, never hang
        pass


def destroy(timeout_s: float = 5.0) -> None:
    """Meet the other ranks (at most `timeout_s`), then tear down the subgroups, then the default
    group (the order gloo needs to exit cleanly)."""
    global _current
    _current = None
    if not (dist.is_available() and dist.is_initialized()):
        _created.clear()
        return
    if dist.get_world_size() > 1:
        _meet(timeout_s)
    while _created:
        pg = _created.pop()
        try:
            dist.destroy_process_group(pg)
        except (RuntimeError, ValueError):
            pass
    dist.destroy_process_group()
