"""Point-to-point transfers between neighbouring pipeline ranks: one `P2P` object per step, whose
methods both pipeline schedules (1F1B and interleaved 1F1B) call.

Transfers are batched isend/irecv between neighbouring ranks of the pp group (wrapping around from
the last rank to the first, for interleaving). Activations travel on one tag and gradients on
another, and within one batch activation ops come first, so two ranks that are each other's next
and previous (pp=2) pair their messages in the same order on every backend. An activation that was
sent is released (its storage freed, its autograd graph kept for the backward) once its send completed.

With `parallel.overlap_p2p_comm` (Megatron's `overlap_p2p_comm`) a batch is posted and not waited
for: each received tensor comes back as an `Incoming` handle that the schedule resolves (`ready`)
just before the compute that uses it, and sends are only reaped as they complete (`finish` waits for
the rest at the end of the schedule). Issue point: `exchange` (one `collectives.Handle` of kind
"p2p" per batch, and per op on gloo); wait point: `Incoming.get` / `finish`.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from . import collectives as C
from .state import Grid

ACT_TAG, GRAD_TAG = 7, 11


def release(t: torch.Tensor | None) -> None:
    """Free an activation's storage after it was sent; its grad_fn stays for the backward."""
    if t is not None and t.grad_fn is not None and t._base is None and t.numel() > 1:
        t.data = torch.empty((1,), device=t.device, dtype=t.dtype)


class P2P:
    """Send/receive activations and their gradients between neighbouring pipeline ranks.
    Every tensor exchanged in one schedule has the same shape and dtype ([b, s(/tp), h])."""

    # Test hook, NCCL's rules on gloo: activations and gradients on one tag, so messages between two
    # ranks pair by their order alone (NCCL has no tags), and each batch completes before the next is
    # posted (NCCL runs a rank's batches one after another on its stream). A schedule that relies on
    # tags mispairs; one that needs a later batch to complete an earlier one hangs (tests time out).
    NCCL_ORDER = False

    def __init__(
        self,
        grid: Grid,
        shape: tuple,
        dtype: torch.dtype,
        device: torch.device,
        trace: list | None = None,
        overlap: bool = False,
    ):
        self.grid, self.shape, self.dtype, self.device = grid, tuple(shape), dtype, device
        self.trace = trace  # a list: record ("C", -1, -1, t0, t1) of each time blocked on a transfer
        self.overlap = overlap  # parallel.overlap_p2p_comm: receives resolved at use, sends never waited on
        self.sending: list[tuple] = []  # (batch handle, activation to release once sent)

    # ------------------------------------------------------------------ what the schedules call
    # (each returns what `exchange` returns: tensors, or `Incoming` handles under overlap)

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
    ) -> tuple:
        """One batch of transfers; returns (from prev, from next): received tensors (an activation
        marked requires_grad), or with `overlap` `Incoming` handles that the schedule resolves with
        `ready` just before it uses them. A sent activation is released once its send completed."""
        g = self.grid
        if g.pp_size == 1:
            return None, None
        ops, kinds, bufs = [], [], []  # kinds: "send", "prev" / "next" (a receive from that side)
        pg = g.pp.pg
        act, grad = (ACT_TAG, ACT_TAG) if P2P.NCCL_ORDER else (ACT_TAG, GRAD_TAG)
        if send_next is not None:
            ops.append(dist.P2POp(dist.isend, self._check(send_next), g.next_rank, pg, act))
            kinds.append("send")
        if recv_prev:
            bufs.append(self._buffer())
            ops.append(dist.P2POp(dist.irecv, bufs[-1], g.prev_rank, pg, act))
            kinds.append("prev")
        if send_prev is not None:
            ops.append(dist.P2POp(dist.isend, self._check(send_prev), g.prev_rank, pg, grad))
            kinds.append("send")
        if recv_next:
            bufs.append(self._buffer())
            ops.append(dist.P2POp(dist.irecv, bufs[-1], g.next_rank, pg, grad))
            kinds.append("next")
        self._reap()
        if not ops:
            release(send_next)
            return None, None
        works = dist.batch_isend_irecv(ops)
        # gloo: one work per op (a send completes only once the peer has received it, so a receive
        # waits for its own work only); NCCL: one work for the whole batch
        if len(works) == len(ops):
            recvs = [C.issue(w, "p2p", dict(op=k)) for k, w in zip(kinds, works, strict=True) if k != "send"]
            sends = [w for k, w in zip(kinds, works, strict=True) if k == "send"]
            sent = C.issue(_All(sends), "p2p", dict(op="send")) if sends else None
        else:
            sent = C.issue(_All(works), "p2p", dict(op="batch"))
            recvs = [sent] * len(bufs)
        got = {
            k: Incoming(b, h, k == "prev", self)
            for k, b, h in zip([k for k in kinds if k != "send"], bufs, recvs, strict=True)
        }
        if sent is not None:
            self.sending.append((sent, send_next))
        if P2P.NCCL_ORDER:
            for h in {id(h): h for h in recvs + ([sent] if sent else [])}.values():
                h.wait()
        if not self.overlap:
            out = tuple(got[k].get() if k in got else None for k in ("prev", "next"))
            if sent is not None:
                self._wait(sent)
            self._reap()
            return out
        return got.get("prev"), got.get("next")

    @staticmethod
    def ready(x):
        """The tensor behind a value `exchange` returned (waits for an `Incoming` one)."""
        return x.get() if isinstance(x, Incoming) else x

    def finish(self) -> None:
        """End of the schedule: wait for every transfer still in flight."""
        for h, _ in self.sending:
            self._wait(h)
        self._reap()

    def _wait(self, h: C.Handle) -> None:
        if h.done:
            return
        t0 = time.perf_counter()
        h.wait()
        if self.trace is not None:
            self.trace.append(("C", -1, -1, t0, time.perf_counter()))

    def _reap(self) -> None:
        """Release activations whose sends have completed (without waiting for any)."""
        keep = []
        for h, t in self.sending:
            if h.is_completed():
                h.wait()
                release(t)
            else:
                keep.append((h, t))
        self.sending = keep

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


class _All:
    """The works of one batch as one work."""

    def __init__(self, works: list):
        self.works = works

    def wait(self):
        for w in self.works:
            w.wait()

    def is_completed(self) -> bool:
        return all(w.is_completed() for w in self.works)


class Incoming:
    """A tensor being received: `get()` waits for it (the wait point) and returns it."""

    def __init__(self, buf: torch.Tensor, handle: C.Handle, activation: bool, p2p: P2P):
        self.buf, self.handle, self.activation, self.p2p = buf, handle, activation, p2p

    def get(self) -> torch.Tensor:
        if not self.handle.done:
            self.p2p._wait(self.handle)
        if self.activation and not self.buf.requires_grad:
            self.buf.requires_grad_()
        return self.buf
