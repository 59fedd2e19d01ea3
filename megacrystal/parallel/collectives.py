"""Collectives over a `state.Group`, with the fallbacks gloo needs.

A group of size 1 makes every call a no-op (no process group exists for it). Where a backend lacks
a fused collective (older gloo has no reduce-scatter, nor all-gather into one tensor), the same
result is produced from all_reduce / all_gather lists; `FORCE_FALLBACK` makes tests take that path.
Async calls return an object with `.wait()`.

Overlapped collectives go through `issue(work, kind)`, which returns a `Handle`: its creation is the
issue point and its `wait()` the wait point of one collective of `kind` ("param_gather",
"grad_reduce", "p2p"). Observers (`observe`) see both events, and `inject_delay` makes every handle
of one kind complete no earlier than a fixed time after its issue (benchmarks/overlap.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from ..log import say_once
from .state import Group

FORCE_FALLBACK = False
_unsupported: set[tuple[str, str]] = set()  # (collective, backend) seen to raise "not supported"


class _Done:
    def wait(self):
        return None


class _Then:
    """A work handle that runs `fn` after the wrapped work completes."""

    def __init__(self, work, fn):
        self.work, self.fn = work, fn

    def wait(self):
        if self.work is not None:
            self.work.wait()
        fn, self.fn = self.fn, None
        if fn is not None:
            fn()

    def is_completed(self) -> bool:
        return self.work is None or self.work.is_completed()


def _backend(group: Group) -> str:
    try:
        return str(dist.get_backend(group.pg))
    except (RuntimeError, ValueError):
        return "unknown"


def _native(name: str, group: Group) -> bool:
    return not FORCE_FALLBACK and (name, _backend(group)) not in _unsupported


def _mark_unsupported(name: str, group: Group, err: Exception) -> None:
    _unsupported.add((name, _backend(group)))
    say_once(
        f"fallback-{name}-{_backend(group)}",
        f"{name} unsupported on {_backend(group)} ({str(err).splitlines()[0][:80]}); using a fallback",
    )


def _is_unsupported(err: Exception, group: Group) -> bool:
    """Shapes are checked before the call, so on gloo any error at dispatch means a missing
    collective (its messages vary by version and device); elsewhere only an explicit one counts."""
    msg = str(err).lower()
    return _backend(group).split(":")[-1] == "gloo" or any(
        w in msg for w in ("not supported", "unsupported", "does not support", "not implemented")
    )


_MISSING = object()


def _try_native(name: str, fn, out: torch.Tensor, inp: torch.Tensor, group: Group, async_op: bool):
    """Run the backend's own collective; `_MISSING` when the backend lacks it (the caller falls back)."""
    if not _native(name, group):
        return _MISSING
    try:
        work = fn(out, inp, group=group.pg, async_op=async_op)
        return work if async_op else None
    except (RuntimeError, NotImplementedError) as e:
        if not _is_unsupported(e, group):
            raise
        _mark_unsupported(name, group, e)
        return _MISSING


def all_reduce(t: torch.Tensor, group: Group, op=dist.ReduceOp.SUM, async_op: bool = False):
    if group.size == 1:
        return _Done() if async_op else None
    work = dist.all_reduce(t, op=op, group=group.pg, async_op=async_op)
    return work if async_op else None


def broadcast(t: torch.Tensor, src: int, group: Group) -> None:
    """`src` is a global rank."""
    if group.size > 1:
        dist.broadcast(t, src=src, group=group.pg)


def reduce_scatter_flat(out: torch.Tensor, inp: torch.Tensor, group: Group, async_op: bool = False):
    """out = (sum over the group of inp)[rank*n:(rank+1)*n], n = out.numel(); inp 1-D, contiguous.
    `out` may be that slice of `inp` itself (in place)."""
    n = out.numel()
    if inp.numel() != n * group.size:
        raise ValueError(f"reduce_scatter: input of {inp.numel()} elements for {group.size} outputs of {n}")
    if group.size == 1:
        if out.data_ptr() != inp.data_ptr():
            out.copy_(inp[:n])
        return _Done() if async_op else None
    work = _try_native(
        "reduce_scatter",
        getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor,
        out,
        inp,
        group,
        async_op,
    )
    if work is not _MISSING:
        return work
    # fallback: all-reduce the whole input in place, keep our slice
    lo = group.rank * n
    work = dist.all_reduce(inp, group=group.pg, async_op=async_op)

    def take():
        if out.data_ptr() != inp[lo : lo + n].data_ptr():
            out.copy_(inp[lo : lo + n])

    if async_op:
        return _Then(work, take)
    take()
    return None


def all_gather_flat(out: torch.Tensor, inp: torch.Tensor, group: Group, async_op: bool = False):
    """out = cat over the group of inp (1-D); `inp` may be this rank's slice of `out`."""
    n = inp.numel()
    if out.numel() != n * group.size:
        raise ValueError(f"all_gather: output of {out.numel()} elements for {group.size} inputs of {n}")
    if group.size == 1:
        if out.data_ptr() != inp.data_ptr():
            out.copy_(inp)
        return _Done() if async_op else None
    work = _try_native(
        "all_gather", getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor, out, inp, group, async_op
    )
    if work is not _MISSING:
        return work
    pieces = list(out.split(n))
    src = inp.clone() if inp.data_ptr() == pieces[group.rank].data_ptr() else inp
    work = dist.all_gather(pieces, src, group=group.pg, async_op=async_op)
    return work if async_op else None


def all_gather_dim(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """Concatenate every rank's `x` along `dim` (same shape on all ranks)."""
    if group.size == 1:
        return x
    moved = x.movedim(dim, 0).contiguous()
    out = torch.empty((group.size * moved.shape[0],) + tuple(moved.shape[1:]), dtype=x.dtype, device=x.device)
    all_gather_flat(out.view(-1), moved.view(-1), group)
    return out.movedim(0, dim).contiguous()


def reduce_scatter_dim(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """Sum `x` over the group and keep this rank's 1/size slice along `dim`."""
    if group.size == 1:
        return x
    if x.shape[dim] % group.size:
        raise ValueError(f"reduce_scatter along dim {dim}: size {x.shape[dim]} is not divisible by {group.size}")
    moved = x.movedim(dim, 0).contiguous()
    if moved.data_ptr() == x.data_ptr():
        moved = moved.clone()  # the fallback reduces in place: never touch the caller's tensor
    out = torch.empty((moved.shape[0] // group.size,) + tuple(moved.shape[1:]), dtype=x.dtype, device=x.device)
    reduce_scatter_flat(out.view(-1), moved.view(-1), group)
    return out.movedim(0, dim).contiguous()


def split_dim(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """This rank's slice of `x` along `dim` (no communication)."""
    if group.size == 1:
        return x
    return x.chunk(group.size, dim)[group.rank].contiguous()


def wait_all(works: list[object | None]) -> None:
    for w in works:
        if w is not None:
            w.wait()


# --------------------------------------------------------------------------- issue and wait points

_observers: list[Callable] = []
_delay: dict[str, float] = {}  # kind -> seconds each collective of that kind takes at least
_link_free: dict[str, float] = {}  # kind -> when the (simulated) link of that kind is free again


class Handle:
    """One issued collective of `kind` (what it carries). Created at its issue point; `wait()` is its
    wait point: it returns once the work is complete (every wait is bounded by the process group's
    timeout) and, under `inject_delay`, no earlier than the simulated completion time."""

    def __init__(self, work, kind: str, info: dict | None = None):
        self.work, self.kind, self.info = work, kind, info or {}
        self.done = False
        self.deadline = 0.0
        d = _delay.get(kind, 0.0) if work is not None else 0.0  # a no-op (group of one) takes no time
        if d > 0:  # the link carries one collective of a kind at a time, as a real one does
            start = max(time.perf_counter(), _link_free.get(kind, 0.0))
            self.deadline = _link_free[kind] = start + d
        for fn in _observers:
            fn("issue", self)

    def wait(self) -> None:
        if self.done:
            return
        self.done = True
        t0 = time.perf_counter()
        if self.work is not None:
            self.work.wait()
        late = self.deadline - time.perf_counter()
        if late > 0:
            time.sleep(late)
        self.info["blocked_s"] = time.perf_counter() - t0
        for fn in _observers:
            fn("wait", self)

    def is_completed(self) -> bool:
        if self.done:
            return True
        ok = self.work is None or getattr(self.work, "is_completed", lambda: False)()
        return ok and time.perf_counter() >= self.deadline


def issue(work, kind: str, info: dict | None = None) -> Handle:
    """Wrap an async work (or None: nothing to wait for) as the `Handle` of one collective of `kind`."""
    return Handle(None if isinstance(work, _Done) else work, kind, info)


def observe(fn: Callable | None) -> None:
    """Call `fn(event, handle)` ("issue" | "wait") for every handle from now on (None: remove all)."""
    if fn is None:
        _observers.clear()
    else:
        _observers.append(fn)


def unobserve(fn: Callable) -> None:
    """Stop calling `fn` (added by `observe`); nothing if it is not there."""
    if fn in _observers:
        _observers.remove(fn)


def inject_delay(kind: str, seconds: float) -> None:
    """Benchmark hook: every collective of `kind` completes no earlier than `seconds` after it is
    issued, and no earlier than `seconds` after the previous one of that kind completes (one link).
    A wait that comes later than that costs nothing. 0 removes the delay."""
    if seconds > 0:
        _delay[kind] = float(seconds)
    else:
        _delay.pop(kind, None)
    _link_free.pop(kind, None)


class _Works:
    """Handles of a batch of transfers; keeps the sent tensors alive until they complete."""

    def __init__(self, works: list, keep: list):
        self.works, self.keep = works, keep

    def wait(self):
        for w in self.works:
            w.wait()
        self.works, self.keep = [], []


def ring_shift(tensors: list[torch.Tensor], group: Group, tag: int) -> tuple[list[torch.Tensor], object]:
    """Send each tensor to the next rank of `group` (wrapping around) and receive the previous rank's,
    without blocking: returns (the receive buffers, a handle whose `.wait()` completes the transfers).
    Every rank of the group must call it with tensors of the same shapes and dtypes."""
    recv = [torch.empty_like(t) for t in tensors]
    if group.size == 1:
        for r, t in zip(recv, tensors, strict=True):
            r.copy_(t)
        return recv, _Done()
    nxt = group.ranks[(group.rank + 1) % group.size]
    prev = group.ranks[(group.rank - 1) % group.size]
    sent = [t.contiguous() for t in tensors]
    ops = [dist.P2POp(dist.isend, t, nxt, group.pg, tag) for t in sent]
    ops += [dist.P2POp(dist.irecv, r, prev, group.pg, tag) for r in recv]
    return recv, _Works(dist.batch_isend_irecv(ops), sent)
