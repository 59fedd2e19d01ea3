"""AdamW over the engine's flat buffers with one fused kernel launch per bucket (`optim.impl: cuda`).

Works on the bucket layout of `parallel.grad_buffers.GradBuffers` with a contiguous parameter buffer:
with the distributed optimizer (ZeRO-1) this rank's slice of each bucket, else the whole bucket. Each
slice is cut at parameter boundaries into chunks of at most 65536 elements tagged with the parameter's
muP group; one launch per bucket reads fp32 grad, master, exp_avg, exp_avg_sq and writes master, the
moments and the bf16 parameter (the model copy), with the gradient-clipping coefficient folded in and
a non-finite flag set when a (clipped) gradient is inf/nan. With the distributed optimizer each
bucket's all-gather is issued right after its launch, in forward order, and waited for as
`DistributedOptimizer`'s are (`parallel.param_gather`: by the next forward with overlap, else here).

Non-finite gradients: the update runs in place, so the flag must be known before it. `step` first
sets the flag on the device from the gradients its launches would read (every element, also the
replicas the global norm does not count), takes its maximum over the world (every rank skips
together, as the torch path does on a non-finite norm) and reads it: when set, nothing changes
(masters, moments, parameters, step count) and `skipped_last` is True, which `clip_and_step` reports
to the engine as a skipped step. One host read per step, on this path only.

The update is `optim.adamw.adamw_`'s, element for element (see kernels/cuda/adamw.cu). The state dicts
are those of the torch paths (`distributed-adamw` per shard, or `adamw` keyed by parameter name), so a
checkpoint resumes with either implementation. `kernel` defaults to the CUDA library's `adamw_flat`;
`adamw_flat_reference` is the same contract in torch (how the plumbing is tested on the CPU).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..compiled.cuda_kernels import adamw_scalars
from ..parallel import collectives as C
from ..parallel.host import to_host
from ..parallel.param_gather import ParamGather, write_and_gather
from .adamw import adamw_
from .distributed import DistributedOptimizer, shard_pieces

CHUNK = 65536


def adamw_flat_reference(master, grad, exp_avg, exp_avg_sq, copy, chunks, groups, beta1, beta2, clip, nonfinite):
    """The kernel's contract in torch: per chunk (offset, length, group), clip, update, copy, flag."""
    for off, n, gi in chunks.tolist():
        g = grad[off : off + n] * clip if clip != 1.0 else grad[off : off + n]
        if not torch.isfinite(g).all():
            nonfinite.fill_(1)
        decay, step_size, bc2_sqrt, eps = groups[gi]
        p, m, v = master[off : off + n], exp_avg[off : off + n], exp_avg_sq[off : off + n]
        # adamw_ with the same scalars: (1 - lr*wd) = decay, -lr/bc1 = step_size, sqrt(bc2) = bc2_sqrt
        if decay != 1.0:
            p.mul_(decay)
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        d = v.sqrt().div_(bc2_sqrt).add_(eps)
        p.addcdiv_(m, d, value=step_size)
        if copy is not None:
            copy[off : off + n].copy_(p)


def chunk_table(pieces: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """(offset, length, group) pieces -> chunks of at most CHUNK elements."""
    out = []
    for off, n, gi in pieces:
        for a in range(0, n, CHUNK):
            out.append((off + a, min(CHUNK, n - a), gi))
    return out


class FusedAdamW:
    folds_clip = True  # the engine passes the clip coefficient instead of scaling the gradients

    def __init__(
        self,
        buffers,
        groups: list[dict],
        beta1: float = 0.9,
        beta2: float = 0.95,
        eps: float = 1e-9,
        names: dict | None = None,
        kernel=None,
        overlap_param_gather: bool = False,
    ):
        if buffers.param_buffer is None:
            raise ValueError("FusedAdamW needs GradBuffers(contiguous_params=True)")
        if buffers.param_buffer.dtype == torch.float64:
            raise ValueError("FusedAdamW: fp64 parameters are not supported (the kernel keeps fp32 state)")
        if kernel is None:
            from ..compiled.cuda_kernels import library

            lib = library()
            if lib is None:
                raise RuntimeError("optim.impl=cuda: the CUDA kernels are not available (see the log line above)")
            kernel = lib.adamw_flat
        self.kernel = kernel
        self.buf = buffers
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.names = names or {}
        self.step_count = 0
        self.clip_coef = 1.0
        pbuf = buffers.param_buffer
        dev = pbuf.device
        self.separate_master = pbuf.dtype != torch.float32
        self.groups = [
            dict(
                name=g.get("name", ""),
                lr_mult=float(g.get("lr_mult", 1.0)),
                weight_decay=float(g.get("weight_decay", 0.0)),
            )
            for g in groups
        ]
        group_of = {id(p): gi for gi, g in enumerate(groups) for p in g["params"]}
        self.shards = []  # per bucket: lo, hi, master, exp_avg, exp_avg_sq, chunks, params [(p, a, z)]
        for b in buffers.buckets:
            lo, hi = buffers.shard_range(b)
            pieces, params = [], []
            for p, a, z, gi in shard_pieces(buffers, b, lo, hi, group_of):
                pieces.append((a - lo, z - a, gi))
                params.append((p, a, z))
            table = chunk_table(sorted(pieces))
            self.shards.append(
                dict(
                    lo=lo,
                    hi=hi,
                    master=pbuf[lo:hi].float() if self.separate_master else pbuf[lo:hi],
                    exp_avg=torch.zeros(hi - lo, dtype=torch.float32, device=dev),
                    exp_avg_sq=torch.zeros(hi - lo, dtype=torch.float32, device=dev),
                    chunks=torch.tensor(table, dtype=torch.int64, device=dev).reshape(-1, 3),
                    params=params,
                )
            )
        self.nonfinite_flag = torch.zeros(1, dtype=torch.int32, device=dev)
        self.param_gather = ParamGather(buffers, overlap_param_gather) if buffers.distributed else None
        self.skipped_last = False

    @torch.no_grad()
    def nonfinite_part(self) -> torch.Tensor:
        """1.0 (float64, on the device) when a gradient this rank's launches will read is inf/nan, else
        0.0: the replicas the global norm does not count included. No collective and no host read: the
        engine sums it over the world with the norm in the step's second read (`Engine._norm_and_loss`)
        and hands the verdict to `step` as `found_nonfinite`."""
        grads = [self.buf.grad_buffer[s["lo"] : s["hi"]] for s in self.shards if s["hi"] > s["lo"]]
        if not grads:
            return torch.zeros(1, dtype=torch.float64, device=self.buf.grad_buffer.device)
        peaks = torch.stack([n.float() for n in torch._foreach_norm(grads, float("inf"))])
        return (~torch.isfinite(peaks)).any().to(torch.float64).reshape(1)

    @torch.no_grad()
    def _agree_nonfinite(self) -> bool:
        """Outside the engine's step (no `found_nonfinite` given): agree over the world, one host read."""
        flag = self.nonfinite_part()
        C.all_reduce(flag, self.buf.grid.world, op=dist.ReduceOp.MAX)
        return to_host(flag, "fused_adamw.nonfinite")[0] > 0

    @torch.no_grad()
    def step(self, lr: float, found_nonfinite: bool | None = None) -> None:
        """One update. `found_nonfinite`: the world's verdict on the gradients (from the engine's step
        read); None checks here (one all-reduce and one host read)."""
        self.skipped_last = self._agree_nonfinite() if found_nonfinite is None else bool(found_nonfinite)
        if self.skipped_last:  # like the torch path on a non-finite norm: no state changes
            self.nonfinite_flag.fill_(1)  # what `nonfinite()` reports (a device write, no sync)
            self.clip_coef = 1.0
            return
        self.step_count += 1
        scalars = [
            adamw_scalars(lr * g["lr_mult"], g["weight_decay"], self.step_count, self.beta1, self.beta2, self.eps)
            for g in self.groups
        ]
        clip, self.clip_coef = self.clip_coef, 1.0
        pbuf = self.buf.param_buffer
        gather = self.param_gather
        if gather is not None:
            gather.wait_all()  # a gather still in flight reads the shards about to change
        # in the order the forward uses the buckets: each one's all-gather is issued once it is written
        for i in gather.order if gather is not None else range(len(self.shards)):
            s = self.shards[i]
            if s["chunks"].shape[0] > 0:
                copy = pbuf[s["lo"] : s["hi"]] if self.separate_master else None
                self.kernel(
                    s["master"],
                    self.buf.grad_buffer[s["lo"] : s["hi"]],
                    s["exp_avg"],
                    s["exp_avg_sq"],
                    copy,
                    s["chunks"],
                    scalars,
                    self.beta1,
                    self.beta2,
                    clip,
                    self.nonfinite_flag,
                )
            if gather is not None:
                gather.issue(i)
        if gather is not None:
            gather.step_done()

    @torch.no_grad()
    def gather_params(self) -> None:
        """Parameters <- masters (the bf16 copy), all-gathered over dp with ZeRO-1 (waited for)."""
        if self.param_gather is not None:
            write_and_gather(self.param_gather, self.shards, self.separate_master)
        elif self.separate_master:
            for s in self.shards:
                self.buf.param_buffer[s["lo"] : s["hi"]].copy_(s["master"])

    def nonfinite(self) -> bool:
        """Did any (clipped) gradient the kernel saw since the last call hold inf/nan? Resets the flag
        (one host read; a diagnostic, not called in the step)."""
        seen = to_host(self.nonfinite_flag, "fused_adamw.kernel_flag")[0] > 0
        self.nonfinite_flag.zero_()
        return seen

    reload_masters = DistributedOptimizer.reload_masters  # the same shard records as ZeRO-1

    # ------------------------------------------------------------------ state: the torch paths' formats

    def layout(self) -> dict:
        return DistributedOptimizer.layout(self)

    def _views(self):
        """(name, {exp_avg, exp_avg_sq[, master]}) per parameter (replicated layout)."""
        for s in self.shards:
            for p, a, z in s["params"]:
                o, shape = a - s["lo"], p.shape
                d = dict(
                    exp_avg=s["exp_avg"][o : o + z - a].view(shape),
                    exp_avg_sq=s["exp_avg_sq"][o : o + z - a].view(shape),
                )
                if self.separate_master:
                    d["master"] = s["master"][o : o + z - a].view(shape)
                yield self.names.get(id(p), self.buf.names.get(id(p), "?")), d

    def state_dict(self) -> dict:
        if self.buf.distributed:  # the same shard records as ZeRO-1, so the same dict
            return DistributedOptimizer.state_dict(self)
        return dict(kind="adamw", step=self.step_count, state=dict(self._views()))

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        if self.buf.distributed:
            DistributedOptimizer.load_state_dict(self, sd)
            return
        if sd.get("kind") != "adamw":
            raise ValueError(f"optimizer state: expected kind 'adamw', got {sd.get('kind')!r}")
        for name, views in self._views():
            if name not in sd["state"]:
                raise ValueError(f"optimizer state: no entry for parameter {name!r}")
            s = sd["state"][name]
            for k in ("exp_avg", "exp_avg_sq"):
                if tuple(s[k].shape) != tuple(views[k].shape):
                    raise ValueError(
                        f"optimizer state: {name}.{k} has shape {tuple(s[k].shape)}, expected {tuple(views[k].shape)}"
                    )
                views[k].copy_(s[k])
            if "master" in views and "master" in s:
                views["master"].copy_(s["master"])
        if self.separate_master and not all("master" in s for s in sd["state"].values()):
            self.reload_masters()
        self.step_count = int(sd["step"])


__all__ = ["CHUNK", "FusedAdamW", "adamw_", "adamw_flat_reference", "chunk_table"]
