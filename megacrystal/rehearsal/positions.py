"""Which ranks a rehearsal plays: one per distinct position of the grid, not all N.

The grid's axes come from `parallel.state.ORDERS` (slowest to fastest varying), so an axis added
there (context parallel) is covered here without a change. Along the pipeline axis every coordinate
and the context-parallel axis every coordinate is played (neighbours exchange tensors: pipeline
stages, and the K/V blocks of the cp ring, whose every send the p2p check pairs with its receive; the
first and last stages differ from the middle ones); along every other axis its first and last coordinate (the first holds the rank-0 duties, the others
differ only in shard offsets and data, which the last one stands for).
"""

from __future__ import annotations

import itertools
import math

import torch

from ..parallel.state import ORDERS

EVERY_COORDINATE = ("pp", "cp")


def axis_sizes(parallel, world: int) -> dict[str, int]:
    """Size of every axis of the grid (`parallel.<axis>`; dp is what the world leaves)."""
    axes = ORDERS[parallel.order]
    sizes = {a: int(getattr(parallel, a)) for a in axes if a != "dp"}
    sizes["dp"] = world // math.prod(sizes.values())
    return {a: sizes[a] for a in axes}


def rank_of(world: int, sizes: dict[str, int], order: str) -> torch.Tensor:
    """Global ranks indexed by the axes in ORDERS[order] (slowest first)."""
    axes = ORDERS[order]
    return torch.arange(world).reshape([sizes[a] for a in axes])


def coordinates(world: int, sizes: dict[str, int], order: str, rank: int) -> dict[str, int]:
    axes = ORDERS[order]
    out, rest = {}, rank
    for a in reversed(axes):
        out[a] = rest % sizes[a]
        rest //= sizes[a]
    return {a: out[a] for a in axes}


def played_coordinates(sizes: dict[str, int]) -> dict[str, list[int]]:
    out = {}
    for a, n in sizes.items():
        out[a] = list(range(n)) if a in EVERY_COORDINATE else sorted({0, n - 1})
    return out


def played_ranks(world: int, sizes: dict[str, int], order: str) -> list[int]:
    """The played global ranks, rank 0 first."""
    axes = ORDERS[order]
    grid = rank_of(world, sizes, order)
    coords = played_coordinates(sizes)
    ranks = {int(grid[tuple(c)]) for c in itertools.product(*(coords[a] for a in axes))}
    return sorted(ranks)
