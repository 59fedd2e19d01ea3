"""Data-parallel gradient reduction in contiguous buckets, and the gradient norm.

All trainable parameters of this rank get one fp32 gradient buffer (fp64 for fp64 parameters;
`p.main_grad` is a view of it). fp32/fp64 parameters accumulate straight into it (`p.grad` is that view); bf16 parameters add their
gradient into it in a post-accumulate hook and drop the bf16 copy. Parameters are laid out in
reverse registration order (roughly the order backward produces them) and cut into buckets of
about `bucket_size_mb`. A bucket is reduced over dp as soon as every parameter in it received its
last micro-batch's gradient (counted in the hook), so on NCCL the reduction overlaps the rest of
the backward; `overlap=False` reduces everything after the backward.

Plain data parallelism all-reduces (sums) each bucket over the replicas (`grid.replicas`: dp x cp, as
context parallelism shards no parameter but gives each cp rank a part of every sequence). With the
distributed optimizer each bucket is padded to a multiple of dp·cp and reduce-scattered: replica d
keeps slice d of every bucket, which is exactly the part of the gradient its optimizer shard needs. Parameters can also live in one
contiguous parameter buffer of the same layout (`param_buffer`), so the updated shards are
all-gathered in place.

Gradients of tied-embedding copies (first and last pipeline stage) go in buckets of their own that
are summed over the embedding group before the dp reduction (their shards would not line up after
it). Sequence-parallel gradients are summed over tp afterwards (tp ranks share one layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..model.param_spec import param_spec
from ..ops.precision import wide_dtype
from . import collectives as C
from .state import Grid


@dataclass
class Bucket:
    index: int
    start: int  # offset of the bucket in the buffers
    size: int  # elements, padded
    params: list = field(default_factory=list)
    deferred: bool = False  # tied-embedding bucket: reduced after the embedding-group sum
    pending: int = 0
    work: object | None = None
    launched: bool = False


class GradBuffers:
    def __init__(
        self,
        named_params: list[tuple[str, nn.Parameter]],
        grid: Grid,
        bucket_size_mb: float = 25.0,
        distributed: bool = False,
        overlap: bool = True,
        contiguous_params: bool = False,
        tied: list | None = None,
    ):
        self.grid = grid
        self.group = grid.replicas  # the ranks that hold these parameters: dp x cp
        self.distributed = distributed
        self.overlap = overlap
        self.names = {id(p): n for n, p in named_params}
        self.params = [p for _, p in named_params]
        tied_ids = {id(p) for p in (tied or [])}
        pad = self.group.size * 64 if distributed else 64
        cap = max(1, int(bucket_size_mb * 2**20 / 4))
        device = self.params[0].device if self.params else torch.device("cpu")

        self.buckets: list[Bucket] = []
        self.offset: dict[int, int] = {}
        pos = 0

        def close(members: list, deferred: bool):
            nonlocal pos
            if not members:
                return
            b = Bucket(len(self.buckets), pos, 0, members, deferred)
            off = pos
            for p in members:
                self.offset[id(p)] = off
                off += p.numel()
            b.size = int(math.ceil((off - pos) / pad) * pad)
            pos += b.size
            self.buckets.append(b)

        ordinary = [p for p in reversed(self.params) if id(p) not in tied_ids]
        current, numel = [], 0
        for p in ordinary:
            current.append(p)
            numel += p.numel()
            if numel >= cap:
                close(current, False)
                current, numel = [], 0
        close(current, False)
        close([p for p in reversed(self.params) if id(p) in tied_ids], True)

        self.numel = pos
        dtypes = {p.dtype for p in self.params}
        self.grad_dtype = wide_dtype(self.params[0].dtype) if len(dtypes) == 1 else torch.float32
        self.grad_buffer = torch.zeros(pos, dtype=self.grad_dtype, device=device)
        self.param_buffer = None
        if contiguous_params and self.params:
            if len(dtypes) != 1:
                raise ValueError(f"contiguous parameter buffer needs one dtype, got {sorted(map(str, dtypes))}")
            self.param_buffer = torch.zeros(pos, dtype=self.params[0].dtype, device=device)
        self.bucket_of: dict[int, Bucket] = {}
        for b in self.buckets:
            for p in b.params:
                self.bucket_of[id(p)] = b
                lo = self.offset[id(p)]
                p.main_grad = self.grad_buffer[lo : lo + p.numel()].view(p.shape)
                if self.param_buffer is not None:
                    view = self.param_buffer[lo : lo + p.numel()].view(p.shape)
                    view.copy_(p.data)
                    p.data = view
                p.grad = p.main_grad if p.dtype == self.grad_dtype else None
                p.register_post_accumulate_grad_hook(self._on_grad)

    # ------------------------------------------------------------------ per step

    def start_step(self, num_microbatches: int) -> None:
        """Zero the gradients; each parameter will receive `num_microbatches` backward passes."""
        self.grad_buffer.zero_()
        for b in self.buckets:
            b.pending = len(b.params) * num_microbatches
            b.work, b.launched = None, False
        for p in self.params:
            if p.dtype == self.grad_dtype:
                p.grad = p.main_grad

    def _on_grad(self, p: torch.Tensor) -> None:
        g = p.grad
        if g is not None and g.data_ptr() != p.main_grad.data_ptr():
            p.main_grad.add_(g)
            p.grad = None if p.dtype != self.grad_dtype else p.main_grad
        b = self.bucket_of[id(p)]
        b.pending -= 1
        if b.pending == 0 and self.overlap and not b.deferred:
            self._launch(b)

    def bucket_grad(self, b: Bucket) -> torch.Tensor:
        return self.grad_buffer[b.start : b.start + b.size]

    def shard_range(self, b: Bucket) -> tuple[int, int]:
        """[lo, hi) in buffer offsets of this replica's slice of bucket `b` (the whole bucket if plain)."""
        if not self.distributed:
            return b.start, b.start + b.size
        n = b.size // self.group.size
        lo = b.start + self.group.rank * n
        return lo, lo + n

    def _launch(self, b: Bucket) -> None:
        if b.launched:
            return
        b.launched = True
        g = self.bucket_grad(b)
        if self.distributed:
            lo, hi = self.shard_range(b)
            work = C.reduce_scatter_flat(self.grad_buffer[lo:hi], g, self.group, async_op=True)
        else:
            work = C.all_reduce(g, self.group, async_op=True)
        b.work = C.issue(work, "grad_reduce", dict(bucket=b.index))  # issue point; wait point: finish()

    def finish(self) -> None:
        """Complete the reduction: tied-embedding sums over the embedding group, then every bucket
        not yet launched, then wait for all."""
        deferred = [b for b in self.buckets if b.deferred]
        if deferred and self.grid.embedding.size > 1:
            for b in deferred:
                C.all_reduce(self.bucket_grad(b), self.grid.embedding)
        for b in self.buckets:
            self._launch(b)
        for b in self.buckets:
            if b.work is not None:
                b.work.wait()
                b.work = None

    def allreduce_sequence_parallel(self) -> None:
        """Sum over tp the gradients of sequence-parallel parameters (one flat all-reduce)."""
        if self.grid.tp.size == 1:
            return
        grads = [p.main_grad for p in self.params if param_spec(p).sequence_parallel]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        C.all_reduce(flat, self.grid.tp)
        for g, v in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(v.view_as(g))

    # ------------------------------------------------------------------ norm and clipping

    def counted(self, p: torch.Tensor) -> bool:
        """Does this rank's copy of `p` count towards the global gradient norm? Parameters replicated
        over tp count on tp rank 0 only; the last stage's copy of a tied embedding never does."""
        spec = param_spec(p)
        if spec.tied_copy:
            return False
        return not (self.grid.tp_rank > 0 and not spec.sharded)

    def norm_sq_part(self) -> torch.Tensor:
        """This rank's share of the squared global gradient norm (float64 [1], on the device): summed
        over the world it counts every element once (the distributed optimizer's shards, which span
        dp x cp; replicated gradients on the first dp and cp rank only)."""
        pieces = []
        if self.distributed:
            for b in self.buckets:
                lo, hi = self.shard_range(b)
                for p in b.params:
                    if not self.counted(p):
                        continue
                    a = max(lo, self.offset[id(p)])
                    z = min(hi, self.offset[id(p)] + p.numel())
                    if a < z:
                        pieces.append(self.grad_buffer[a:z])
        elif self.grid.dp_rank == 0 and self.grid.cp_rank == 0:
            pieces = [p.main_grad for p in self.params if self.counted(p)]
        if pieces:
            return torch.stack(torch._foreach_norm(pieces)).double().pow(2).sum().reshape(1)
        return torch.zeros(1, dtype=torch.float64, device=self.grad_buffer.device)

    @staticmethod
    def clip_coef(total_norm: float, max_norm: float) -> float:
        """The factor that brings the norm to at most `max_norm` (1.0: no clipping)."""
        if max_norm <= 0 or not math.isfinite(total_norm):
            return 1.0
        coef = max_norm / (total_norm + 1e-6)
        return coef if coef < 1.0 else 1.0

    def clip_(self, total_norm: float, max_norm: float) -> float:
        """Scale all gradients so that the norm is at most `max_norm`; returns the factor used."""
        coef = self.clip_coef(total_norm, max_norm)
        if coef < 1.0:
            self.grad_buffer.mul_(coef)
        return coef
