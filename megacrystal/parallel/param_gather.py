"""ZeRO-1's parameter all-gather, one collective per bucket, overlapped with the next forward.

The distributed optimizers (`optim.distributed`, `optim.fused_adamw`) update their shard bucket by
bucket, in the order the forward uses the buckets (`order`), and issue each bucket's all-gather as
soon as its shard is written (`issue`). With `parallel.overlap_param_gather` nothing waits then:
a forward pre-hook on every unit of the model (embedding, each block, final norm, head) waits for the
buckets of that unit's parameters just before it runs (`install`), so the gather of later buckets
runs behind the compute of earlier units. Without it the optimizer waits for every bucket at the end
of its step (`wait_all`). Anything else that reads parameters (checkpoint save, state export, loading,
the end of a run) calls `Engine.sync_params()`, which is `wait_all`.

Issue point: `ParamGather.issue` (one `collectives.Handle` of kind "param_gather" per bucket).
Wait point: the pre-hook (`_before`) or `wait_all`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import collectives as C
from .grad_buffers import GradBuffers


class ParamGather:
    def __init__(self, buffers: GradBuffers, overlap: bool):
        self.buf = buffers
        self.overlap = overlap
        self.pending: dict[int, C.Handle] = {}  # bucket index -> its gather in flight
        rank = {id(p): i for i, p in enumerate(buffers.params)}  # registration order: forward order
        first_use = {b.index: min(rank[id(p)] for p in b.params) for b in buffers.buckets}
        self.order = sorted(first_use, key=first_use.get)  # bucket indices, first used first
        self.hooks: list = []

    def issue(self, index: int) -> None:
        """All-gather bucket `index` of the parameter buffer over dp; this rank's shard is written."""
        b = self.buf.buckets[index]
        lo, hi = self.buf.shard_range(b)
        pbuf = self.buf.param_buffer
        work = C.all_gather_flat(pbuf[b.start : b.start + b.size], pbuf[lo:hi], self.buf.group, async_op=True)
        self.pending[index] = C.issue(work, "param_gather", dict(bucket=index))

    def step_done(self) -> None:
        """The optimizer issued every bucket: without overlap, wait for them all now."""
        if not self.overlap:
            self.wait_all()

    def wait(self, index: int) -> None:
        h = self.pending.pop(index, None)
        if h is not None:
            h.wait()

    def wait_all(self) -> None:
        for i in list(self.pending):
            self.wait(i)

    def install(self, chunks: list[nn.Module]) -> None:
        """A forward pre-hook on each unit of `chunks` that waits for the buckets of its parameters."""
        bucket_of = self.buf.bucket_of
        pos = {b: i for i, b in enumerate(self.order)}
        for chunk in chunks:
            for unit in units(chunk):
                mine = sorted({bucket_of[id(p)].index for p in unit.parameters() if id(p) in bucket_of}, key=pos.get)
                if mine:
                    self.hooks.append(unit.register_forward_pre_hook(self._before(mine)))

    def _before(self, indices: list[int]):
        def hook(_module, _args):
            if self.pending:
                for i in indices:
                    self.wait(i)

        return hook


def units(chunk: nn.Module) -> list[nn.Module]:
    """The modules a forward calls in turn: the chunk's children, with containers opened."""
    out = []
    for m in chunk.children():
        if isinstance(m, (nn.ModuleDict, nn.ModuleList, nn.Sequential)):
            out.extend(m.children())
        else:
            out.append(m)
    return out


@torch.no_grad()
def write_and_gather(gather: ParamGather, shards: list[dict], separate_master: bool) -> None:
    """Parameters <- the masters: each rank writes its shards into the parameter buffer, then every
    bucket is all-gathered and waited for (loading a checkpoint, or after the masters were set)."""
    gather.wait_all()
    pbuf = gather.buf.param_buffer
    for i in gather.order:
        s = shards[i]
        if separate_master:
            pbuf[s["lo"] : s["hi"]].copy_(s["master"])
        gather.issue(i)
    gather.wait_all()
