"""Pipeline stages: which layers each rank holds, and point-to-point transfers between stages.

With pp stages and vpp virtual stages per rank (Megatron's interleaving), the model is cut into
pp*vpp equal chunks of layers; chunk c of pipeline rank r is virtual stage c*pp + r. So with
8 layers, pp=2, vpp=2: rank 0 holds layers [0,1] and [4,5], rank 1 holds [2,3] and [6,7].
The embedding lives on virtual stage 0, final norm + head on the last one. With tied embeddings and
pp > 1, the last stage holds its own copy of the embedding (seeded like it) whose gradient is summed
with the first stage's over the embedding group, so both copies stay equal.

Transfers are batched isend/irecv between neighbouring ranks of the pp group (wrapping around from
the last rank to the first, for interleaving). Activations travel on one tag and gradients on
another, and within one batch activation ops come first, so two ranks that are each other's next
and previous (pp=2) pair their messages in the same order on every backend.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import ModelConfig
from ..model.transformer import Transformer
from .state import Grid

ACT_TAG, GRAD_TAG = 7, 11


def chunk_layers(num_layers: int, pp: int, vpp: int, pp_rank: int, chunk: int) -> tuple[list[int], bool, bool]:
    """(layer ids, has embedding, has head) of virtual chunk `chunk` on pipeline rank `pp_rank`."""
    n = pp * vpp
    if num_layers % n:
        raise ValueError(f"{num_layers} layers cannot be split into pp*vpp = {n} equal chunks")
    per = num_layers // n
    stage = chunk * pp + pp_rank
    return list(range(stage * per, (stage + 1) * per)), stage == 0, stage == n - 1


def build_chunks(cfg: ModelConfig, layers, grid: Grid) -> list[Transformer]:
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


class P2P:
    """Send/receive activations and their gradients between neighbouring pipeline ranks.
    Every tensor exchanged in one schedule has the same shape and dtype ([b, s(/tp), h])."""

    def __init__(self, grid: Grid, shape: tuple, dtype: torch.dtype, device: torch.device):
        self.grid, self.shape, self.dtype, self.device = grid, tuple(shape), dtype, device
        self.bytes_sent = 0
        self.trace: list | None = None  # a list: record ("C", t0, t1) of each exchange

    def _buffer(self) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype, device=self.device)

    def communicate(
        self,
        send_next: torch.Tensor | None = None,
        send_prev: torch.Tensor | None = None,
        recv_prev: bool = False,
        recv_next: bool = False,
    ):
        """One batch of transfers; returns (tensor from prev, tensor from next), received ones
        marked requires_grad when they are activations."""
        g = self.grid
        if g.pp_size == 1:
            return None, None
        ops, from_prev, from_next = [], None, None
        pg = g.pp.pg
        if send_next is not None:
            ops.append(dist.P2POp(dist.isend, self._check(send_next), g.next_rank, pg, ACT_TAG))
        if recv_prev:
            from_prev = self._buffer()
            ops.append(dist.P2POp(dist.irecv, from_prev, g.prev_rank, pg, ACT_TAG))
        if send_prev is not None:
            ops.append(dist.P2POp(dist.isend, self._check(send_prev), g.prev_rank, pg, GRAD_TAG))
        if recv_next:
            from_next = self._buffer()
            ops.append(dist.P2POp(dist.irecv, from_next, g.next_rank, pg, GRAD_TAG))
        if ops:
            t0 = time.perf_counter()
            for w in dist.batch_isend_irecv(ops):
                w.wait()
            if self.trace is not None:
                self.trace.append(("C", -1, -1, t0, time.perf_counter()))
        if from_prev is not None:
            from_prev.requires_grad_()
        return from_prev, from_next

    @staticmethod
    def connect(grid: Grid, device: torch.device) -> None:
        """One ring exchange in which every rank of the pp group takes part: NCCL requires the
        first batched p2p call of a group to involve all its ranks (the schedules' first calls don't)."""
        if grid.pp_size == 1:
            return
        ring = P2P(grid, (1,), torch.float32, device)
        ring.communicate(send_next=torch.zeros(1, device=device), recv_prev=True)

    def _check(self, t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape) != self.shape or t.dtype != self.dtype:
            raise RuntimeError(f"pipeline p2p: tensor {tuple(t.shape)} {t.dtype}, expected {self.shape} {self.dtype}")
        self.bytes_sent += t.numel() * t.element_size()
        return t.detach().contiguous()
