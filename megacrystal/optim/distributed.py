"""The distributed optimizer (ZeRO stage 1): fp32 master weights and Adam moments sharded over dp.

It works on the bucket layout of `GradBuffers` (with `distributed=True, contiguous_params=True`):
dp rank d owns slice d of every bucket. After the gradients are reduce-scattered, each rank runs
AdamW on its slice only (per muP group: the slice is cut at parameter boundaries into segments,
each updated with its parameter's group LR and weight decay), writes the result into its slice of
the parameter buffer, and the buffer is all-gathered so every rank holds the full updated model:
bucket by bucket, each gather issued once its shard is written and, with
`parallel.overlap_param_gather`, waited for by the next forward (`parallel.param_gather`).

Memory per parameter on a rank, with bf16 parameters: 2 (param) + 4 (fp32 grad) + 12/dp (fp32
master + exp_avg + exp_avg_sq), against 2 + 4 + 12 for the replicated optimizer. With fp32
parameters the master is the parameter buffer itself: 4 + 4 + 8/dp (fp64: 8 + 8 + 16/dp).
"""

from __future__ import annotations

import torch

from ..ops.precision import wide_dtype
from ..parallel.grad_buffers import GradBuffers
from ..parallel.param_gather import ParamGather, write_and_gather
from .adamw import AdamWSteps


class DistributedOptimizer(AdamWSteps):
    def __init__(
        self,
        buffers: GradBuffers,
        groups: list[dict],
        beta1: float = 0.9,
        beta2: float = 0.95,
        eps: float = 1e-9,
        overlap_param_gather: bool = False,
    ):
        """`overlap_param_gather`: leave each bucket's all-gather in flight after `step` (the engine's
        forward pre-hooks wait for it, `parallel.param_gather`); else `step` waits for all of them."""
        if buffers.param_buffer is None or not buffers.distributed:
            raise ValueError("DistributedOptimizer needs GradBuffers(distributed=True, contiguous_params=True)")
        self.buf = buffers
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.step_count = 0
        pbuf = buffers.param_buffer
        self.separate_master = pbuf.dtype != wide_dtype(pbuf.dtype)
        state_dtype = wide_dtype(pbuf.dtype)
        group_of = {}
        self.groups = []
        for gi, g in enumerate(groups):
            self.groups.append(
                dict(
                    name=g.get("name", ""),
                    lr_mult=float(g.get("lr_mult", 1.0)),
                    weight_decay=float(g.get("weight_decay", 0.0)),
                    master=[],
                    grad=[],
                    exp_avg=[],
                    exp_avg_sq=[],
                )
            )
            for p in g["params"]:
                group_of[id(p)] = gi
        self.shards = []  # per bucket: dict(lo, hi, master, exp_avg, exp_avg_sq, parts)
        for b in buffers.buckets:
            lo, hi = buffers.shard_range(b)
            n = hi - lo
            master = pbuf[lo:hi].float() if self.separate_master else pbuf[lo:hi]
            shard = dict(
                lo=lo,
                hi=hi,
                master=master,
                exp_avg=torch.zeros(n, dtype=state_dtype, device=pbuf.device),
                exp_avg_sq=torch.zeros(n, dtype=state_dtype, device=pbuf.device),
                parts={},  # group index -> this bucket's pieces of the group (what one update call takes)
            )
            self.shards.append(shard)
            for _p, a, z, gi in shard_pieces(buffers, b, lo, hi, group_of):
                g = self.groups[gi]
                part = shard["parts"].setdefault(
                    gi,
                    dict(
                        lr_mult=g["lr_mult"],
                        weight_decay=g["weight_decay"],
                        master=[],
                        grad=[],
                        exp_avg=[],
                        exp_avg_sq=[],
                    ),
                )
                for d in (g, part):
                    d["master"].append(master[a - lo : z - lo])
                    d["grad"].append(buffers.grad_buffer[a:z])
                    d["exp_avg"].append(shard["exp_avg"][a - lo : z - lo])
                    d["exp_avg_sq"].append(shard["exp_avg_sq"][a - lo : z - lo])
        self.param_gather = ParamGather(buffers, overlap_param_gather)

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """Update bucket by bucket in the order the forward uses them; each bucket's all-gather is
        issued as soon as its shard is written (waited for by the next forward, or here without overlap)."""
        self.step_count += 1
        pbuf = self.buf.param_buffer
        self.param_gather.wait_all()  # a gather still in flight reads the shards about to change
        for i in self.param_gather.order:
            s = self.shards[i]
            for part in s["parts"].values():
                self._update(part, part["master"], part["grad"], lr)
            if self.separate_master:
                pbuf[s["lo"] : s["hi"]].copy_(s["master"])
            self.param_gather.issue(i)
        self.param_gather.step_done()

    def gather_params(self) -> None:
        """Write the master shards into the parameter buffer and all-gather it over dp (waited for)."""
        write_and_gather(self.param_gather, self.shards, self.separate_master)

    @torch.no_grad()
    def reload_masters(self) -> None:
        """After the parameters were overwritten: masters <- this rank's slice of the parameters."""
        if self.separate_master:
            for s in self.shards:
                s["master"].copy_(self.buf.param_buffer[s["lo"] : s["hi"]].float())

    def layout(self) -> dict:
        return dict(
            dp=self.buf.group.size,
            dp_rank=self.buf.group.rank,
            buckets=[(b.start, b.size) for b in self.buf.buckets],
        )

    def state_dict(self) -> dict:
        shards = []
        for s in self.shards:
            d = dict(exp_avg=s["exp_avg"], exp_avg_sq=s["exp_avg_sq"])
            if self.separate_master:
                d["master"] = s["master"]
            shards.append(d)
        return dict(kind="distributed-adamw", step=self.step_count, layout=self.layout(), shards=shards)

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        if sd.get("kind") != "distributed-adamw":
            raise ValueError(f"optimizer state: expected kind 'distributed-adamw', got {sd.get('kind')!r}")
        if sd["layout"] != self.layout():
            raise ValueError(
                f"optimizer state: saved for shard layout {sd['layout']}, this run has "
                f"{self.layout()} (same parallel config and model needed to resume a shard)"
            )
        for s, d in zip(self.shards, sd["shards"], strict=True):
            s["exp_avg"].copy_(d["exp_avg"])
            s["exp_avg_sq"].copy_(d["exp_avg_sq"])
            if self.separate_master:
                s["master"].copy_(d["master"])
        self.step_count = int(sd["step"])


def shard_pieces(buffers, bucket, lo: int, hi: int, group_of: dict):
    """The parameters of `bucket` that overlap this rank's flat range [lo, hi): (p, a, z, group index),
    with [a, z) the overlap in buffer offsets. A parameter in no optimizer group is an error."""
    for p in bucket.params:
        a = max(lo, buffers.offset[id(p)])
        z = min(hi, buffers.offset[id(p)] + p.numel())
        if a >= z:
            continue
        if id(p) not in group_of:
            raise ValueError(f"parameter {buffers.names.get(id(p), '?')} is in no optimizer group")
        yield p, a, z, group_of[id(p)]
