"""The pipeline step, simulated event by event from the schedules the engine runs.

`trace(pp, vpp, m)` replays `parallel.pipeline_schedules.run` (the engine's own dispatch to no
pipelining, 1F1B or interleaved 1F1B) on every pipeline rank with a recording step and a recording
`P2P` whose `exchange` notes the batched transfers instead of making them. That gives each rank's
exact sequence of compute entries (F/B, micro-batch, chunk) and of batched exchanges (which of
send-next, send-prev, receive-prev, receive-next are in each batch), without a process group.

`simulate` then plays those sequences with compute times and transfer times:
- today's engine (`blocking=True`): an exchange is `batch_isend_irecv` waited on at once, so each
  of its transfers starts when both ends have posted it, and the rank waits for the last one;
- `blocking=False` (early-posted receives, sends not waited on; issue 21's overlap): a rank waits
  only for its receives, which complete one transfer time after the sender posted them.
Idle time per rank against the step's span is the bubble; nothing in it is a formula."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from types import SimpleNamespace

from ..parallel import pipeline_schedules as schedules
from ..parallel.p2p import P2P

SEND_NEXT, SEND_PREV, RECV_PREV, RECV_NEXT = "send_next", "send_prev", "recv_prev", "recv_next"


class _Step:
    """Stands where `parallel.step.StepCompute` stands: records the compute the schedule asks for."""

    def __init__(self, m: int, events: list):
        self.num_microbatches, self.events = m, events

    def forward(self, chunk, mb, x):
        self.events.append(("F", mb, chunk))
        return ("y", mb, chunk)

    def backward(self, chunk, mb, x, y, gy):
        self.events.append(("B", mb, chunk))
        return ("g", mb, chunk)


class _RecordingP2P(P2P):
    """The engine's P2P with `exchange` recording the batch instead of sending it; every other
    method (recv_forward, send_forward_recv_backward, ...) is the engine's own."""

    def __init__(self, grid, events: list, overlap: bool = False):  # no buffers, no device
        self.grid, self.events, self.trace = grid, events, None
        self.overlap, self.sending = overlap, []  # overlap: the schedules post as with overlap_p2p_comm

    def exchange(self, send_next=None, send_prev=None, recv_prev=False, recv_next=False):
        if self.grid.pp_size == 1:
            return None, None
        ops = tuple(
            k
            for k, on in (
                (SEND_NEXT, send_next is not None),
                (SEND_PREV, send_prev is not None),
                (RECV_PREV, recv_prev),
                (RECV_NEXT, recv_next),
            )
            if on
        )
        if ops:
            self.events.append(("X", ops))
        return ("x",) if recv_prev else None, ("g",) if recv_next else None


@lru_cache(maxsize=256)
def trace(pp: int, vpp: int, m: int, overlap: bool = False) -> tuple:
    """Per pipeline rank, the tuple of events the engine's schedule produces for m micro-batches
    (`overlap`: with `parallel.overlap_p2p_comm`, whose interleaved steady state posts two batches)."""
    out = []
    for r in range(pp):
        events: list = []
        grid = SimpleNamespace(pp_size=pp, pp_rank=r, vpp_size=vpp)
        schedules.run(_Step(m, events), _RecordingP2P(grid, events, overlap), grid)
        out.append(tuple(events))
    return tuple(out)


@dataclass
class RankTimeline:
    compute_s: float = 0.0  # busy time
    end_s: float = 0.0
    wait_s: float = 0.0  # time in exchanges (transfers and waiting for the peer)
    xfer_s: float = 0.0  # the part of it spent transferring (the rest is waiting: bubble)
    last_entry: dict = field(default_factory=dict)  # (kind, chunk) -> (start, end) of the last such entry
    counts: dict = field(default_factory=dict)  # (kind, chunk) -> number of entries
    first_start: float | None = None

    def last(self, kind: str, chunk: int) -> tuple[float, float]:
        """(start, end) of the last entry of `kind` for `chunk`."""
        return self.last_entry.get((kind, chunk), (0.0, 0.0))


@dataclass
class PipelineResult:
    span_s: float
    ranks: list

    def idle(self, r: int) -> float:
        return 1.0 - self.ranks[r].compute_s / self.span_s if self.span_s > 0 else 0.0

    @property
    def bubble(self) -> float:
        """Mean idle fraction over the pipeline ranks (transfers and waiting count as idle)."""
        return sum(self.idle(r) for r in range(len(self.ranks))) / len(self.ranks)


_PEER = {SEND_NEXT: (1, RECV_PREV), RECV_PREV: (-1, SEND_NEXT), SEND_PREV: (-1, RECV_NEXT), RECV_NEXT: (1, SEND_PREV)}
_RECV = (RECV_PREV, RECV_NEXT)


def simulate(pp: int, vpp: int, m: int, duration, transfer, blocking: bool = True) -> PipelineResult:
    """`duration(rank, kind, chunk)` -> seconds of one F or B; `transfer(src, dst)` -> seconds of one
    activation (or gradient) message between neighbouring pipeline ranks."""
    events = trace(pp, vpp, m)  # (the combined batches; the engine's overlap posts the interleaved
    # steady state in two and waits at use: `trace(..., overlap=True)` has that order, not yet the waits)
    dur = [{(k, c): duration(r, k, c) for k in "FB" for c in range(vpp)} for r in range(pp)]
    hop = {}
    for r in range(pp):
        for q in ((r + 1) % pp, (r - 1) % pp):
            hop[(r, q)] = transfer(r, q) if pp > 1 else 0.0
    posts = [{k: [] for k in _PEER} for _ in range(pp)]
    clock = [0.0] * pp
    ptr = [0] * pp
    pending: list = [None] * pp  # the op indices of a posted, unfinished exchange
    tl = [RankTimeline() for _ in range(pp)]
    ready = deque(range(pp))
    queued = [True] * pp
    while ready:
        r = ready.popleft()
        queued[r] = False
        ev, t, d_r, rt = events[r], clock[r], dur[r], tl[r]
        i, n = ptr[r], len(ev)
        while i < n:
            e = ev[i]
            if e[0] != "X":
                key = (e[0], e[2])
                d = d_r[key]
                if rt.first_start is None:
                    rt.first_start = t
                rt.last_entry[key] = (t, t + d)
                rt.counts[key] = rt.counts.get(key, 0) + 1
                rt.compute_s += d
                t += d
                i += 1
                continue
            if pending[r] is None:  # post the batch
                pending[r] = [(op, len(posts[r][op])) for op in e[1]]
                for op in e[1]:
                    posts[r][op].append(t)
                for q in ((r + 1) % pp, (r - 1) % pp):
                    if not queued[q]:
                        ready.append(q)
                        queued[q] = True
            done, longest = t, 0.0
            for op, j in pending[r]:
                step, other = _PEER[op]
                q = (r + step) % pp
                theirs = posts[q][other]
                if len(theirs) <= j:
                    if blocking or op in _RECV:
                        done = None
                        break
                    continue  # a send that is not waited on
                x = hop[(q, r)] if op in _RECV else hop[(r, q)]
                longest = max(longest, x)
                if blocking:
                    done = max(done, max(t, theirs[j]) + x)
                elif op in _RECV:
                    done = max(done, theirs[j] + x)
            if done is None:
                break  # wait for the peer to post; it re-queues this rank when it does
            rt.wait_s += done - t
            rt.xfer_s += min(done - t, longest)
            t = done
            pending[r] = None
            i += 1
        clock[r], ptr[r] = t, i
    stuck = [r for r in range(pp) if ptr[r] < len(events[r])]
    if stuck:
        raise RuntimeError(f"pipeline simulation: ranks {stuck} never completed an exchange (schedule mismatch)")
    for r in range(pp):
        tl[r].end_s = clock[r]
    return PipelineResult(max(clock), tl)


@lru_cache(maxsize=4096)
def _live_profiles(pp: int, vpp: int, m: int, rank: int) -> tuple:
    """The distinct vectors (live forwards per chunk) the rank's schedule passes through after a forward."""
    live = [0] * vpp
    seen = set()
    for e in trace(pp, vpp, m)[rank]:
        if e[0] == "F":
            live[e[2]] += 1
            seen.add(tuple(live))
        elif e[0] == "B":
            live[e[2]] -= 1
    return tuple(seen)


def in_flight(pp: int, vpp: int, m: int, rank: int, weight) -> float:
    """Peak over the rank's schedule of the activations held: sum of `weight(chunk)` over forwards
    whose backward has not run yet (the activation memory the schedule needs)."""
    w = [weight(c) for c in range(vpp)]
    return max((sum(n * x for n, x in zip(v, w, strict=True)) for v in _live_profiles(pp, vpp, m, rank)), default=0.0)
