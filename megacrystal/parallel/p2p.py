"""Point-to-point transfers between neighbouring pipeline ranks: one `P2P` object per step, whose
methods both pipeline schedules (1F1B and interleaved 1F1B) call.

Transfers are batched isend/irecv between neighbouring ranks of the pp group (wrapping around from
the last rank to the first, for interleaving). Activations travel on one tag and gradients on
another, and within one batch activation ops come first, so two ranks that are each other's next
and previous (pp=2) pair their messages in the same order on every backend. An activation that was
sent is released (its storage freed, its autograd graph kept for the backward).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from .state import Grid

ACT_TAG, GRAD_TAG = 7, 11


def release(t: torch.Tensor | None) -> None:
    """Free an activation's storage after it was sent; its grad_fn stays for the backward."""
    if t is not None and t.grad_fn is not None and t._base is None and t.numel() > 1:
        t.data = torch.empty((1,), device=t.device, dtype=t.dtype)


class P2P:
    """Send/receive activations and their gradients between neighbouring pipeline ranks.
    Every tensor exchanged in one schedule has the same shape and dtype ([b, s(/tp), h])."""

    def __init__(self, grid: Grid, shape: tuple, dtype: torch.dtype, device: torch.device, trace: list | None = None):
        self.grid, self.shape, self.dtype, self.device = grid, tuple(shape), dtype, device
        self.trace = trace  # a list: record ("C", -1, -1, t0, t1) of each exchange

    # ------------------------------------------------------------------ what the schedules call

    def recv_forward(self) -> torch.Tensor:
        """The input activation from the previous stage."""
        return self.exchange(recv_prev=True)[0]

    def send_forward(self, y: torch.Tensor | None, recv_prev: bool = False) -> torch.Tensor | None:
        """Send an output activation to the next stage (nothing when None) and optionally receive the
        next input from the previous one, in one batch."""
        return self.exchange(send_next=y, recv_prev=recv_prev)[0]

    def recv_backward(self) -> torch.Tensor:
        """The gradient of this stage's output, from the next stage."""
        return self.exchange(recv_next=True)[1]

    def send_backward(self, gx: torch.Tensor | None, recv_next: bool = False) -> torch.Tensor | None:
        """Send an input gradient to the previous stage (nothing when None) and optionally receive the
        next output gradient from the next one, in one batch."""
        return self.exchange(send_prev=gx, recv_next=recv_next)[1]

    def send_forward_recv_backward(self, y: torch.Tensor) -> torch.Tensor:
        return self.exchange(send_next=y, recv_next=True)[1]

    def send_backward_recv_forward(self, gx: torch.Tensor | None) -> torch.Tensor:
        return self.exchange(send_prev=gx, recv_prev=True)[0]

    def exchange(
        self,
        send_next: torch.Tensor | None = None,
        send_prev: torch.Tensor | None = None,
        recv_prev: bool = False,
        recv_next: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One batch of transfers; returns (tensor from prev, tensor from next), a received activation
        marked requires_grad. A sent activation is released afterwards."""
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
        release(send_next)
        if from_prev is not None:
            from_prev.requires_grad_()
        return from_prev, from_next

    # ------------------------------------------------------------------ setup

    @staticmethod
    def connect(grid: Grid, device: torch.device) -> None:
        """One ring exchange in which every rank of the pp group takes part: NCCL requires the
        first batched p2p call of a group to involve all its ranks (the schedules' first calls don't)."""
        if grid.pp_size == 1:
            return
        P2P(grid, (1,), torch.float32, device).send_forward(torch.zeros(1, device=device), recv_prev=True)

    def _buffer(self) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype, device=self.device)

    def _check(self, t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape) != self.shape or t.dtype != self.dtype:
            raise RuntimeError(f"pipeline p2p: tensor {tuple(t.shape)} {t.dtype}, expected {self.shape} {self.dtype}")
        return t.detach().contiguous()
