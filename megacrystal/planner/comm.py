"""Collective and point-to-point times from an alpha-beta model per link class, on the grid's real
rank placement.

Placement: `parallel.state.group_ranks` (the engine's own grid) lists every group's global ranks;
with `gpus_per_node` devices per node, a group of a kind has `size` members, at most `per_node` of
them in one node, over `nodes` nodes (all groups of a kind are congruent, so the first one stands
for all).

Links: inside a node a device reaches the others at `intra_bw` per direction (NVLink/NVSwitch);
across nodes each device has its own NIC (`inter_bw`, rail-aligned as on DGX/HGX), so a group with
`per_node` members in each node moves `per_node` NICs' worth between two nodes. The bus bandwidth
of a collective is therefore `intra_bw*intra_eff` inside a node and `min(that, per_node*inter_bw*
inter_eff)` across nodes. NCCL's algorithms, as in its cost model:
  ring all-reduce      2(n-1)/n * M / B + 2(n-1) * alpha
  tree all-reduce      2 M / B + 2 (log2(nodes) * alpha_inter + (per_node-1) * alpha_intra)   (nodes > 1)
  ring all-gather / reduce-scatter   (n-1)/n * M / B + (n-1) * alpha       (M: the full tensor)
  point-to-point       M / B_link + alpha   (a ring hop of the cp group: the slowest link it crosses)
NCCL takes the faster of ring and tree, which is what `all_reduce` returns (with the name)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from ..parallel.state import group_ranks
from .hardware import Hardware


@dataclass(frozen=True)
class Span:
    size: int
    per_node: int
    nodes: int


@lru_cache(maxsize=1024)
def spans(world: int, tp: int, pp: int, order: str, gpus_per_node: int, cp: int = 1) -> dict:
    """Span of each group kind (tp, pp, dp, mp, embedding, cp, dp_cp) and of the world, on this placement."""
    out = {}
    for kind, groups in group_ranks(world, tp, pp, order, cp).items():
        out[kind] = span_of(groups[0], gpus_per_node)
    out["world"] = span_of(list(range(world)), gpus_per_node)
    return out


def span_of(ranks: list[int], gpus_per_node: int) -> Span:
    nodes: dict[int, int] = {}
    for r in ranks:
        nodes[r // gpus_per_node] = nodes.get(r // gpus_per_node, 0) + 1
    return Span(len(ranks), max(nodes.values()), len(nodes))


def same_node(a: int, b: int, gpus_per_node: int) -> bool:
    return a // gpus_per_node == b // gpus_per_node


def _intra(hw: Hardware) -> tuple[float, float]:
    if hw.intra_bw is None:
        return hw.inter_bw * hw.inter_eff, hw.inter_lat
    return hw.intra_bw * hw.intra_eff, hw.intra_lat


def bus(hw: Hardware, s: Span) -> tuple[float, float]:
    """(bus bandwidth bytes/s, latency per ring step s) of a group with span `s`."""
    bw, lat = _intra(hw)
    if s.nodes > 1:
        bw = min(bw, s.per_node * hw.inter_bw * hw.inter_eff)
        lat = hw.inter_lat
    return bw, lat


def all_reduce(nbytes: float, s: Span, hw: Hardware) -> tuple[float, str]:
    """(seconds, 'ring' or 'tree')."""
    n = s.size
    if n <= 1 or nbytes <= 0:
        return 0.0, "none"
    bw, lat = bus(hw, s)
    ring = 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * lat
    if s.nodes <= 1:
        return ring, "ring"
    _, intra_lat = _intra(hw)
    tree = 2 * nbytes / bw + 2 * (math.log2(s.nodes) * hw.inter_lat + (s.per_node - 1) * intra_lat)
    return (tree, "tree") if tree < ring else (ring, "ring")


def all_gather(nbytes: float, s: Span, hw: Hardware) -> float:
    """`nbytes`: the gathered (full) tensor; reduce-scatter costs the same."""
    n = s.size
    if n <= 1 or nbytes <= 0:
        return 0.0
    bw, lat = bus(hw, s)
    return (n - 1) / n * nbytes / bw + (n - 1) * lat


reduce_scatter = all_gather


def p2p(nbytes: float, intra: bool, hw: Hardware) -> float:
    """One message between two devices, in the same node or not."""
    if nbytes <= 0:
        return 0.0
    if intra:
        bw, lat = _intra(hw)
    else:
        bw, lat = hw.inter_bw * hw.inter_eff, hw.inter_lat
    return nbytes / bw + lat


def ring_hop(nbytes: float, s: Span, hw: Hardware) -> float:
    """One hop of a ring over the group: every member sends to the next and receives from the previous
    at once (full duplex), so a hop takes one message's time on the slowest link the ring crosses."""
    return p2p(nbytes, s.nodes <= 1, hw) if s.size > 1 else 0.0


def collective(kind: str, nbytes: float, s: Span, hw: Hardware) -> float:
    if kind == "p2p":
        return ring_hop(nbytes, s, hw)
    if kind == "all_reduce":
        return all_reduce(nbytes, s, hw)[0]
    if kind in ("all_gather", "reduce_scatter"):
        return all_gather(nbytes, s, hw)
    raise ValueError(f"unknown collective {kind!r}")
