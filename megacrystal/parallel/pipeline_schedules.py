"""Forward/backward schedules over micro-batches: no pipelining, 1F1B, interleaved 1F1B, forward only.

A schedule only decides the order of compute and transfers; the work itself is the step object's
`forward(chunk, mb, x)` (input activation -> output activation, or the scaled loss on the last virtual
stage) and `backward(...)` (`parallel.step.StepCompute`); transfers are `parallel.p2p.P2P` methods.

1F1B (PipeDream-flush): rank r runs pp-r-1 warm-up forwards, then alternates one forward with one
backward, then drains the remaining backwards; at most pp-r activations are alive at once.

Interleaved 1F1B (Megatron's, arXiv 2104.04473): each rank holds vpp chunks. Its order is an explicit
table of (forward/backward, micro-batch, chunk) entries, `interleaved_table`: micro-batches advance in
groups of pp through chunk 0, 1, ..., vpp-1 (forward) and back (backward); rank r first runs
2*(pp-r-1) + (vpp-1)*pp warm-up forwards, then one forward and one backward in turn, then the
remaining backwards. That cuts the bubble from (pp-1)/(m+pp-1) to (pp-1)/(vpp*m+pp-1). Needs m % pp == 0.

Transfers (`parallel.overlap_p2p_comm`, Megatron's overlap_p2p_comm): nothing waits where a batch is
posted; a received value is resolved (`P2P.ready`) just before the compute that uses it, and sends
complete in the background (`P2P.finish` at the end). The interleaved steady state then posts two
batches per slot instead of one: the forward's (its output to the next rank, the next input from the
previous one) right after the forward, so they travel during the backward, and the backward's right
after it, so they travel during the next forward. Inputs queued for a later chunk travel behind
everything before their forward, and no rank blocks on its own send. The order of the messages on
each link is the same either way; tests/test_overlap.py checks it with NCCL's rules (`P2P.NCCL_ORDER`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .p2p import P2P
from .state import Grid
from .step import StepCompute


@dataclass(frozen=True)
class Entry:
    """One unit of a schedule: the forward ("F") or backward ("B") of `microbatch` through `chunk`."""

    kind: str
    microbatch: int
    chunk: int

    def __str__(self) -> str:
        return f"{self.kind}{self.microbatch}.{self.chunk}"


def no_pipelining(step: StepCompute) -> None:
    """Gradient accumulation: forward and backward of each micro-batch in turn."""
    for j in range(step.num_microbatches):
        y = step.forward(0, j, None)
        step.backward(0, j, None, y, None)


def one_f_one_b(step: StepCompute, p2p: P2P, grid: Grid) -> None:
    p, r, m = grid.pp_size, grid.pp_rank, step.num_microbatches
    first, last = r == 0, r == p - 1
    warmup = min(p - r - 1, m)
    remaining = m - warmup
    inputs: deque = deque()
    outputs: deque = deque()

    ready = p2p.ready  # received values may be in flight (parallel.overlap_p2p_comm): resolved at use
    for j in range(warmup):
        x = None if first else ready(p2p.recv_forward())
        y = step.forward(0, j, x)
        p2p.send_forward(None if last else y)
        inputs.append(x)
        outputs.append(y)

    x = p2p.recv_forward() if remaining > 0 and not first else None
    for i in range(remaining):
        x = ready(x)
        y = step.forward(0, warmup + i, x)
        inputs.append(x)
        outputs.append(y)
        gy = None if last else p2p.send_forward_recv_backward(y)
        gx = step.backward(0, i, inputs.popleft(), outputs.popleft(), ready(gy))
        if i == remaining - 1:
            p2p.send_backward(None if first else gx)
        elif not first:
            x = p2p.send_backward_recv_forward(gx)

    for i in range(remaining, m):
        gy = None if last else ready(p2p.recv_backward())
        gx = step.backward(0, i, inputs.popleft(), outputs.popleft(), gy)
        p2p.send_backward(None if first else gx)
    p2p.finish()


# --------------------------------------------------------------------------- interleaved 1F1B


def forward_order(pp: int, vpp: int, num_microbatches: int) -> list[tuple[int, int]]:
    """(micro-batch, chunk) of every forward, in order (the same on every rank): groups of pp
    micro-batches through chunk 0, then chunk 1, ... The k-th backward is the k-th entry with the
    chunks reversed (chunk vpp-1-c)."""
    if num_microbatches % pp:
        raise ValueError(f"interleaved 1F1B: {num_microbatches} micro-batches is not a multiple of pp={pp}")
    return [(g + i, c) for g in range(0, num_microbatches, pp) for c in range(vpp) for i in range(pp)]


def warmup_forwards(pp: int, pp_rank: int, vpp: int, num_microbatches: int) -> int:
    """Forwards rank `pp_rank` runs before its first backward: 2*(pp-r-1) + (vpp-1)*pp, at most all."""
    return min(2 * (pp - pp_rank - 1) + (vpp - 1) * pp, num_microbatches * vpp)


def interleaved_table(pp: int, pp_rank: int, vpp: int, num_microbatches: int) -> list[Entry]:
    """This rank's compute, in order: the warm-up forwards, then forward/backward pairs, then the rest
    of the backwards."""
    order = forward_order(pp, vpp, num_microbatches)
    fwd = [Entry("F", mb, c) for mb, c in order]
    bwd = [Entry("B", mb, vpp - 1 - c) for mb, c in order]
    w = warmup_forwards(pp, pp_rank, vpp, num_microbatches)
    steady = [e for pair in zip(fwd[w:], bwd[: len(order) - w], strict=True) for e in pair]
    return fwd[:w] + steady + bwd[len(order) - w :]


def interleaved_one_f_one_b(step: StepCompute, p2p: P2P, grid: Grid) -> None:
    """Run `interleaved_table` with Megatron's transfers: after each table slot one batched exchange
    sends what the slot produced and receives the input of the next forward and the output gradient
    of the next backward. Received tensors queue per chunk; the table says which chunk each is for."""
    p, r, v, m = grid.pp_size, grid.pp_rank, grid.vpp_size, step.num_microbatches
    table = interleaved_table(p, r, v, m)
    fwd = [e for e in table if e.kind == "F"]
    bwd = [e for e in table if e.kind == "B"]
    total = len(fwd)
    warmup = warmup_forwards(p, r, v, m)
    remaining = total - warmup
    first_rank, last_rank = r == 0, r == p - 1
    inputs: list[list] = [[] for _ in range(v)]
    outputs: list[list] = [[] for _ in range(v)]
    out_grads: list[list] = [[] for _ in range(v)]

    def forward(e: Entry):
        if first_rank and e.chunk == 0:
            inputs[0].append(None)  # virtual stage 0 reads the tokens
        x = inputs[e.chunk][-1] = p2p.ready(inputs[e.chunk][-1])  # a receive in flight is waited for here
        y = step.forward(e.chunk, e.microbatch, x)
        outputs[e.chunk].append(y)
        return None if (last_rank and e.chunk == v - 1) else y  # the last virtual stage sends nothing

    def backward(e: Entry):
        if last_rank and e.chunk == v - 1:
            out_grads[e.chunk].append(None)  # the last virtual stage starts from the loss
        gy = p2p.ready(out_grads[e.chunk].pop(0))  # ... and a gradient in flight here
        gx = step.backward(e.chunk, e.microbatch, inputs[e.chunk].pop(0), outputs[e.chunk].pop(0), gy)
        return None if (first_rank and e.chunk == 0) else gx  # the first virtual stage sends nothing

    def next_input_chunk(k: int) -> int | None:
        """Chunk of the activation that arrives after forward k, None when none does. A rank receives
        the input of its next forward from the previous rank, except rank 0: it is pp-1 forwards ahead
        of the last rank, which at that point finishes forward k-(pp-1); that output enters chunk c+1
        here, or ends the model when c is the last chunk."""
        if k + 1 >= total:
            return None
        if not first_rank:
            return fwd[k + 1].chunk
        c = fwd[k - (p - 1)].chunk
        return c + 1 if c < v - 1 else None

    def next_grad_chunk(k: int) -> int | None:
        """Chunk of the output gradient that arrives after backward k (mirror image: the last rank is
        pp-1 backwards ahead of rank 0; a gradient of chunk 0 there ends the model)."""
        if k + 1 >= total:
            return None
        if not last_rank:
            return bwd[k + 1].chunk
        j = k - (p - 1)
        c = bwd[j].chunk if j >= 0 else 0  # rank 0 has run no backward yet
        return c - 1 if c > 0 else None

    # warm-up: forwards only
    if not first_rank:
        inputs[0].append(p2p.recv_forward())
    for k in range(warmup):
        y = forward(fwd[k])
        nxt = fwd[k + 1].chunk if k + 1 < total else None
        recv_prev = nxt is not None and not (first_rank and nxt == 0)
        if k == warmup - 1 and remaining > 0:
            x, gy = p2p.exchange(send_next=y, recv_prev=recv_prev, recv_next=not last_rank)
            if not last_rank:
                out_grads[v - 1].append(gy)
        else:
            x = p2p.send_forward(y, recv_prev=recv_prev)
        if recv_prev:
            inputs[nxt].append(x)

    # steady state: one forward, one backward
    for i in range(remaining):
        kf, kb = warmup + i, i
        y = forward(fwd[kf])
        cf = next_input_chunk(kf) if i < remaining - 1 else None
        if p2p.overlap:  # the forward's transfers are posted now and travel during the backward
            x, _ = p2p.exchange(send_next=y, recv_prev=cf is not None)
        gx = backward(bwd[kb])
        cb = next_grad_chunk(kb)
        if p2p.overlap:  # ... and the backward's during the next forward
            _, gy = p2p.exchange(send_prev=gx, recv_next=cb is not None)
        else:  # one batch after both (Megatron's send_forward_backward_recv_forward_backward)
            x, gy = p2p.exchange(send_next=y, send_prev=gx, recv_prev=cf is not None, recv_next=cb is not None)
        if cf is not None:
            inputs[cf].append(x)
        if cb is not None:
            out_grads[cb].append(gy)

    # cool-down: backwards only
    if remaining == 0 and not last_rank:
        out_grads[v - 1].append(p2p.recv_backward())
    for k in range(remaining, total):
        gx = backward(bwd[k])
        nxt = bwd[k + 1].chunk if k + 1 < total else None
        recv_next = nxt is not None and not (last_rank and nxt == v - 1)
        gy = p2p.send_backward(gx, recv_next=recv_next)
        if recv_next:
            out_grads[nxt].append(gy)
    p2p.finish()


def forward_only(step: StepCompute, p2p: P2P, grid: Grid) -> None:
    """Evaluation: every micro-batch through every virtual stage in order, no backward."""
    p, r, v = grid.pp_size, grid.pp_rank, grid.vpp_size
    for j in range(step.num_microbatches):
        for c in range(v):
            first = r == 0 and c == 0
            last = r == p - 1 and c == v - 1
            x = None if first else p2p.ready(p2p.recv_forward())
            y = step.forward(c, j, x)
            if not last:
                p2p.send_forward(y)
    p2p.finish()


def run(step: StepCompute, p2p: P2P, grid: Grid) -> None:
    """Pick the schedule for the grid: none (pp=1), 1F1B, or interleaved 1F1B (vpp>1)."""
    if grid.pp_size == 1:
        no_pipelining(step)
    elif grid.vpp_size == 1:
        one_f_one_b(step, p2p, grid)
    else:
        interleaved_one_f_one_b(step, p2p, grid)
