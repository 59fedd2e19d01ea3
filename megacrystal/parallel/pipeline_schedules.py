"""Forward/backward schedules over micro-batches: no pipelining, 1F1B, interleaved 1F1B, forward only.

A schedule only decides the order of compute and transfers; the work itself is `Steps.forward`
(chunk, micro-batch, input activation -> output activation, or the scaled loss on the last virtual
stage) and `Steps.backward`. After an activation is sent, its storage is released (the autograd
graph is kept; the backward is run through the engine directly, as the shape no longer matches).

1F1B (PipeDream-flush): rank r runs pp-r-1 warm-up forwards, then alternates one forward with one
backward, then drains the remaining backwards; at most pp-r activations are alive at once.
Interleaved 1F1B: each rank holds vpp chunks; micro-batches advance in groups of pp through chunk
0, 1, ... (forward) and back (backward), with 2*(pp-r-1) + (vpp-1)*pp warm-up forwards, which cuts
the bubble from (pp-1)/(m+pp-1) to (pp-1)/(vpp*m+pp-1). Needs m % pp == 0.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import torch
from torch.autograd import Variable

from .pipeline import P2P
from .state import Grid


def release(t: torch.Tensor | None) -> None:
    """Free an activation's storage after it was sent; its grad_fn stays for the backward."""
    if t is not None and t.grad_fn is not None and t._base is None and t.numel() > 1:
        t.data = torch.empty((1,), device=t.device, dtype=t.dtype)


class Steps:
    """The compute of a schedule, timed when `trace` is a list: (kind, chunk, mb, t0, t1)."""

    def __init__(self, forward: Callable, trace: list | None = None, sync: Callable | None = None):
        self._forward = forward
        self.trace = trace
        self.sync = sync or (lambda: None)

    def forward(self, chunk: int, mb: int, x: torch.Tensor | None) -> torch.Tensor:
        t0 = time.perf_counter() if self.trace is not None else 0.0
        y = self._forward(chunk, mb, x)
        if self.trace is not None:
            self.sync()
            self.trace.append(("F", chunk, mb, t0, time.perf_counter()))
        return y

    def backward(
        self, chunk: int, mb: int, x: torch.Tensor | None, y: torch.Tensor, gy: torch.Tensor | None
    ) -> torch.Tensor | None:
        t0 = time.perf_counter() if self.trace is not None else 0.0
        if gy is None:
            torch.autograd.backward(y)  # the scalar loss of the last stage
        else:
            Variable._execution_engine.run_backward(
                tensors=(y,),
                grad_tensors=(gy,),
                keep_graph=False,
                create_graph=False,
                inputs=(),
                allow_unreachable=True,
                accumulate_grad=True,
            )
        gx = x.grad if x is not None else None
        if self.trace is not None:
            self.sync()
            self.trace.append(("B", chunk, mb, t0, time.perf_counter()))
        return gx


def no_pipelining(steps: Steps, num_microbatches: int) -> None:
    """Gradient accumulation: forward and backward of each micro-batch in turn."""
    for j in range(num_microbatches):
        y = steps.forward(0, j, None)
        steps.backward(0, j, None, y, None)


def one_f_one_b(steps: Steps, p2p: P2P, grid: Grid, num_microbatches: int) -> None:
    p, r, m = grid.pp_size, grid.pp_rank, num_microbatches
    first, last = r == 0, r == p - 1
    warmup = min(p - r - 1, m)
    remaining = m - warmup
    inputs: deque = deque()
    outputs: deque = deque()

    def recv_forward():
        return None if first else p2p.communicate(recv_prev=True)[0]

    def send_forward(y):
        if not last:
            p2p.communicate(send_next=y)
            release(y)

    def recv_backward():
        return None if last else p2p.communicate(recv_next=True)[1]

    def send_backward(gx):
        if not first:
            p2p.communicate(send_prev=gx)

    def send_forward_recv_backward(y):
        if last:
            return None
        gy = p2p.communicate(send_next=y, recv_next=True)[1]
        release(y)
        return gy

    def send_backward_recv_forward(gx):
        return None if first else p2p.communicate(send_prev=gx, recv_prev=True)[0]

    for j in range(warmup):
        x = recv_forward()
        y = steps.forward(0, j, x)
        send_forward(y)
        inputs.append(x)
        outputs.append(y)

    x = recv_forward() if remaining > 0 else None
    bwd = 0
    for i in range(remaining):
        y = steps.forward(0, warmup + i, x)
        inputs.append(x)
        outputs.append(y)
        gy = send_forward_recv_backward(y)
        gx = steps.backward(0, bwd, inputs.popleft(), outputs.popleft(), gy)
        bwd += 1
        if i == remaining - 1:
            send_backward(gx)
        else:
            x = send_backward_recv_forward(gx)

    for _ in range(warmup):
        gy = recv_backward()
        gx = steps.backward(0, bwd, inputs.popleft(), outputs.popleft(), gy)
        bwd += 1
        send_backward(gx)


def interleaved_one_f_one_b(steps: Steps, p2p: P2P, grid: Grid, num_microbatches: int) -> None:
    p, r, v, m = grid.pp_size, grid.pp_rank, grid.vpp_size, num_microbatches
    if m % p:
        raise ValueError(f"interleaved 1F1B: {m} micro-batches is not a multiple of pp={p}")
    total = m * v
    first_rank, last_rank = r == 0, r == p - 1
    warmup = (p - r - 1) * 2 + (v - 1) * p
    all_warmup = warmup >= total
    warmup = min(warmup, total)
    remaining = total - warmup

    def chunk_of(k: int, forward: bool) -> int:
        c = (k % (p * v)) // p
        return c if forward else v - 1 - c

    def mb_of(k: int) -> int:
        return (k // (p * v)) * p + k % p

    inputs = [[] for _ in range(v)]
    outputs = [[] for _ in range(v)]
    out_grads = [[] for _ in range(v)]

    def forward_k(k: int):
        c = chunk_of(k, True)
        if first_rank and c == 0:
            inputs[c].append(None)
        y = steps.forward(c, mb_of(k), inputs[c][-1])
        outputs[c].append(y)
        return None if (last_rank and c == v - 1) else y  # the last virtual stage sends nothing

    def backward_k(k: int):
        c = chunk_of(k, False)
        if last_rank and c == v - 1:
            out_grads[c].append(None)
        gx = steps.backward(c, mb_of(k), inputs[c].pop(0), outputs[c].pop(0), out_grads[c].pop(0))
        return None if (first_rank and c == 0) else gx  # the first virtual stage sends nothing

    # warm-up: forwards only
    if not first_rank:
        inputs[0].append(p2p.communicate(recv_prev=True)[0])
    for k in range(warmup):
        y = forward_k(k)
        nxt = chunk_of(k + 1, True)
        recv_prev = not (first_rank and nxt == 0) and k != total - 1
        if k == warmup - 1 and not all_warmup:
            x, gy = p2p.communicate(send_next=y, recv_prev=recv_prev, recv_next=not last_rank)
            if not last_rank:
                out_grads[v - 1].append(gy)
        else:
            x, _ = p2p.communicate(send_next=y, recv_prev=recv_prev)
        release(y)
        if recv_prev:
            inputs[nxt].append(x)

    # steady state: one forward, one backward
    for i in range(remaining):
        kf, kb = i + warmup, i
        y = forward_k(kf)
        gx = backward_k(kb)
        recv_prev = True
        if first_rank:
            nxt_f = chunk_of(kf - (p - 1), True)
            if nxt_f == v - 1:
                recv_prev = False
            nxt_f += 1
        else:
            nxt_f = chunk_of(kf + 1, True)
        recv_next = True
        if last_rank:
            nxt_b = chunk_of(kb - (p - 1), False)
            if nxt_b == 0:
                recv_next = False
            nxt_b -= 1
        else:
            nxt_b = chunk_of(kb + 1, False)
        if i == remaining - 1:
            recv_prev = False
        x, gy = p2p.communicate(send_next=y, send_prev=gx, recv_prev=recv_prev, recv_next=recv_next)
        release(y)
        if recv_prev:
            inputs[nxt_f].append(x)
        if recv_next:
            out_grads[nxt_b].append(gy)

    # cool-down: backwards only
    if all_warmup and not last_rank:
        out_grads[v - 1].append(p2p.communicate(recv_next=True)[1])
    for k in range(remaining, total):
        gx = backward_k(k)
        nxt = chunk_of(k + 1, False)
        recv_next = not (last_rank and nxt == v - 1) and k != total - 1
        _, gy = p2p.communicate(send_prev=gx, recv_next=recv_next)
        if recv_next:
            out_grads[nxt].append(gy)


def forward_only(steps: Steps, p2p: P2P, grid: Grid, num_microbatches: int) -> None:
    """Evaluation: every micro-batch through every virtual stage in order, no backward."""
    p, r, v = grid.pp_size, grid.pp_rank, grid.vpp_size
    for j in range(num_microbatches):
        for c in range(v):
            first = r == 0 and c == 0
            last = r == p - 1 and c == v - 1
            x = None if first else p2p.communicate(recv_prev=True)[0]
            y = steps.forward(c, j, x)
            if not last:
                p2p.communicate(send_next=y)


def run(steps: Steps, p2p: P2P, grid: Grid, num_microbatches: int) -> None:
    """Pick the schedule for the grid: none (pp=1), 1F1B, or interleaved 1F1B (vpp>1)."""
    if grid.pp_size == 1:
        no_pipelining(steps, num_microbatches)
    elif grid.vpp_size == 1:
        one_f_one_b(steps, p2p, grid, num_microbatches)
    else:
        interleaved_one_f_one_b(steps, p2p, grid, num_microbatches)
