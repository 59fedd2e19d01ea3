"""Pipeline stages: which layers each rank holds (transfers between stages: `parallel.p2p`).

With pp stages and vpp virtual stages per rank (Megatron's interleaving), the model is cut into
pp*vpp equal chunks of layers; chunk c of pipeline rank r is virtual stage c*pp + r. So with
8 layers, pp=2, vpp=2: rank 0 holds layers [0,1] and [4,5], rank 1 holds [2,3] and [6,7].
The embedding lives on virtual stage 0, final norm + head on the last one. With tied embeddings and
pp > 1, the last stage holds its own copy of the embedding (seeded like it) whose gradient is summed
with the first stage's over the embedding group, so both copies stay equal.
"""

from __future__ import annotations

import torch.nn as nn

from ..config import ModelConfig
from ..model.layers import LayerFactory
from ..model.transformer import Transformer
from .state import Grid


def chunk_layers(num_layers: int, pp: int, vpp: int, pp_rank: int, chunk: int) -> tuple[list[int], bool, bool]:
    """(layer ids, has embedding, has head) of virtual chunk `chunk` on pipeline rank `pp_rank`."""
    n = pp * vpp
    if num_layers % n:
        raise ValueError(f"{num_layers} layers cannot be split into pp*vpp = {n} equal chunks")
    per = num_layers // n
    stage = chunk * pp + pp_rank
    return list(range(stage * per, (stage + 1) * per)), stage == 0, stage == n - 1


def build_chunks(cfg: ModelConfig, layers: LayerFactory, grid: Grid) -> list[Transformer]:
    """This rank's model chunks (one per virtual stage), parameters uninitialised."""
    out = []
    for c in range(grid.vpp_size):
        ids, pre, post = chunk_layers(cfg.num_layers, grid.pp_size, grid.vpp_size, grid.pp_rank, c)
        out.append(Transformer(cfg, layers=layers, layer_ids=ids, pre_process=pre, post_process=post))
    return out


def tied_embedding_params(chunks: list[nn.Module], cfg: ModelConfig, grid: Grid) -> list[nn.Parameter]:
    """The parameters whose gradient must be summed over the embedding group (pp > 1, tied)."""
    if not cfg.tie_embeddings or grid.pp_size == 1:
        return []
    out = []
    for m in chunks:
        if m.pre_process:
            out.append(m.embed.weight)
        if m.post_process and not m.pre_process:
            out.append(m.head.weight)
    return out
