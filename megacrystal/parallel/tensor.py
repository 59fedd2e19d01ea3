"""Tensor (and sequence) parallel layers: the `Layers` factory of `model.layers`, sharded over tp.

Column-parallel linear: W [out/tp, in] (rows split), output stays sharded. Row-parallel linear:
W [out, in/tp] (columns split), partial outputs summed over tp, bias added after the sum. The
embedding and the output head split the (padded) vocabulary by rows; the loss is the vocab-parallel
cross-entropy (`parallel.cross_entropy`). The fused QKV rows are grouped by KV head in the model,
so a contiguous row split hands every rank whole KV groups.

Sequence parallelism keeps the residual stream split along the sequence (dim 1 of [b, s, h])
between the tensor-parallel regions: a column input is all-gathered (reduce-scattered in backward),
a row output is reduce-scattered (all-gathered in backward). Parameters that stay replicated over
tp then see only a slice of the tokens, so their gradients are partial: they are marked
`_mc_sequence_parallel` and the engine all-reduces them over tp.

Every sharded parameter carries `_mc_shard` (full -> this rank's piece), `_mc_shard_dim` and
`_mc_full_shape`, so `mup.init_parameters` draws the serial values and checkpoints can gather. The
vocabulary and the FFN inner size are zero-padded to a multiple of 64·tp (`PaddedSizes`); padded
parameters also carry `_mc_true_shape` (model/padding.py), which consolidation refits to the serial
padding.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.layers import PaddedSizes, mark
from ..model.padding import set_true_shape
from ..model.wgrad_fusion import linear
from . import collectives as C
from .cross_entropy import vocab_parallel_cross_entropy
from .state import Grid, Group

# --------------------------------------------------------------------------- autograd mappings


class _CopyToTP(torch.autograd.Function):
    """Identity forward; all-reduce of the input gradient over tp (each rank saw part of the output)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous()
        C.all_reduce(g, ctx.group)
        return g, None


class _ReduceFromTP(torch.autograd.Function):
    """Sum of the partial outputs over tp; identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        out = x.contiguous()
        if out is x:
            ctx.mark_dirty(out)  # reduced in place
        C.all_reduce(out, group)
        return out

    @staticmethod
    def backward(ctx, g):
        return g, None


class _GatherSeq(torch.autograd.Function):
    """All-gather along the sequence (dim 1); reduce-scatter of the gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return C.all_gather_dim(x, 1, group)

    @staticmethod
    def backward(ctx, g):
        return C.reduce_scatter_dim(g, 1, ctx.group), None


class _ReduceScatterSeq(torch.autograd.Function):
    """Sum over tp, keep this rank's sequence slice; all-gather of the gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return C.reduce_scatter_dim(x, 1, group)

    @staticmethod
    def backward(ctx, g):
        return C.all_gather_dim(g, 1, ctx.group), None


def copy_to_tp(x, group: Group):
    return x if group.size == 1 else _CopyToTP.apply(x, group)


def reduce_from_tp(x, group: Group):
    return x if group.size == 1 else _ReduceFromTP.apply(x, group)


def gather_seq(x, group: Group):
    return x if group.size == 1 else _GatherSeq.apply(x, group)


def reduce_scatter_seq(x, group: Group):
    return x if group.size == 1 else _ReduceScatterSeq.apply(x, group)


def gather_vocab(logits: torch.Tensor, group: Group, vocab_size: int | None = None) -> torch.Tensor:
    """Full logits from vocab-sharded ones (no autograd), optionally cut to the true vocabulary."""
    full = C.all_gather_dim(logits.contiguous(), logits.ndim - 1, group)
    return full[..., :vocab_size] if vocab_size is not None else full


# --------------------------------------------------------------------------- sharding metadata


def _shard(p: nn.Parameter, full_shape: tuple, dim: int, group: Group) -> nn.Parameter:
    size, rank = group.size, group.rank
    p._mc_full_shape = tuple(full_shape)
    p._mc_shard_dim = dim
    p._mc_shard = lambda full, d=dim, n=size, r=rank: full.chunk(n, d)[r].contiguous()
    return p


# --------------------------------------------------------------------------- layers


class ColumnParallelLinear(nn.Module):
    fuses_wgrad = True

    def __init__(self, in_features: int, out_features: int, bias: bool, init: str, group: Group, sp: bool):
        super().__init__()
        if out_features % group.size:
            raise ValueError(f"column-parallel linear: {out_features} outputs not divisible by tp={group.size}")
        local = out_features // group.size
        self.group, self.sp = group, sp
        self.weight = _shard(
            mark(nn.Parameter(torch.empty(local, in_features)), init), (out_features, in_features), 0, group
        )
        self.bias = _shard(mark(nn.Parameter(torch.zeros(local)), "zeros"), (out_features,), 0, group) if bias else None

    def forward(self, x):
        x = gather_seq(x, self.group) if self.sp else copy_to_tp(x, self.group)
        return linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    fuses_wgrad = True

    def __init__(self, in_features: int, out_features: int, bias: bool, init: str, group: Group, sp: bool):
        super().__init__()
        if in_features % group.size:
            raise ValueError(f"row-parallel linear: {in_features} inputs not divisible by tp={group.size}")
        self.group, self.sp = group, sp
        self.weight = _shard(
            mark(nn.Parameter(torch.empty(out_features, in_features // group.size)), init),
            (out_features, in_features),
            1,
            group,
        )
        self.bias = mark(nn.Parameter(torch.zeros(out_features)), "zeros") if bias else None
        if self.bias is not None and sp:
            self.bias._mc_sequence_parallel = True

    def forward(self, x):
        y = linear(x, self.weight)
        y = reduce_scatter_seq(y, self.group) if self.sp else reduce_from_tp(y, self.group)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Rows [rank*V/tp, (rank+1)*V/tp) of the padded table; other tokens look up zeros, summed over tp."""

    def __init__(self, vocab: int, padded_vocab: int, hidden: int, group: Group, sp: bool):
        super().__init__()
        self.vocab_size, self.padded_vocab = vocab, padded_vocab
        self.group, self.sp = group, sp
        local = padded_vocab // group.size
        self.start = group.rank * local
        self.weight = _shard(
            mark(nn.Parameter(torch.empty(local, hidden)), "embedding"), (padded_vocab, hidden), 0, group
        )
        set_true_shape(self.weight, (vocab, hidden))

    def forward(self, tokens):
        local = self.weight.shape[0]
        if self.group.size > 1:
            outside = (tokens < self.start) | (tokens >= self.start + local)
            idx = (tokens - self.start).masked_fill(outside, 0)
            h = F.embedding(idx, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        else:
            h = F.embedding(tokens, self.weight)
        return reduce_scatter_seq(h, self.group) if self.sp else reduce_from_tp(h, self.group)


class VocabParallelHead(nn.Module):
    """This rank's slice of the logits; padded vocabulary entries are -inf (never predicted)."""

    def __init__(
        self, vocab: int, padded_vocab: int, hidden: int, tied: VocabParallelEmbedding | None, group: Group, sp: bool
    ):
        super().__init__()
        self.vocab_size, self.padded_vocab = vocab, padded_vocab
        self.group, self.sp = group, sp
        local = padded_vocab // group.size
        self.start = group.rank * local
        self._tied = (tied,) if tied is not None else ()
        if tied is None:
            self.weight = _shard(
                mark(nn.Parameter(torch.empty(local, hidden)), "hidden"), (padded_vocab, hidden), 0, group
            )
            set_true_shape(self.weight, (vocab, hidden))

    def head_weight(self):
        return self._tied[0].weight if self._tied else self.weight

    def forward(self, h):
        h = gather_seq(h, self.group) if self.sp else copy_to_tp(h, self.group)
        logits = F.linear(h, self.head_weight())
        first_pad = self.vocab_size - self.start
        if first_pad < logits.shape[-1]:
            logits[..., max(first_pad, 0) :] = float("-inf")
        return logits


class TensorParallelLayers(PaddedSizes):
    """Same interface as `model.layers.SerialLayers`, sharded over `grid.tp`; padded sizes (vocabulary,
    FFN) are multiples of 64·tp, so every shard is a multiple of 64."""

    def __init__(self, grid: Grid, sequence_parallel: bool = False, ce_chunk_elements: int = 1 << 24):
        self.grid = grid
        self.group = grid.tp
        self.tp_size = grid.tp_size
        self.sp = bool(sequence_parallel) and grid.tp_size > 1
        self.ce_chunk_elements = ce_chunk_elements

    def column(self, in_features: int, out_features: int, bias: bool, init: str = "hidden") -> nn.Module:
        return ColumnParallelLinear(in_features, out_features, bias, init, self.group, self.sp)

    def row(self, in_features: int, out_features: int, bias: bool, init: str = "output") -> nn.Module:
        return RowParallelLinear(in_features, out_features, bias, init, self.group, self.sp)

    def embedding(self, vocab: int, hidden: int) -> nn.Module:
        return VocabParallelEmbedding(vocab, self.padded_vocab(vocab), hidden, self.group, self.sp)

    def head(self, vocab: int, hidden: int, tied: nn.Module | None) -> nn.Module:
        return VocabParallelHead(vocab, self.padded_vocab(vocab), hidden, tied, self.group, self.sp)

    def detached_tied_head(self, vocab: int, hidden: int) -> nn.Module:
        """The last pipeline stage's copy of a tied embedding: seeded like it, grads summed with it."""
        h = VocabParallelHead(vocab, self.padded_vocab(vocab), hidden, None, self.group, self.sp)
        mark(h.weight, "embedding", name="embed.weight")
        h.weight._mc_tied_copy = True
        return h

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        return vocab_parallel_cross_entropy(logits, labels, self.group, self.ce_chunk_elements, impl)


# --------------------------------------------------------------------------- RNG streams


class RNGStreams:
    """Named random streams: "default" (same on every tp rank: replicated / sequence-parallel
    regions) and "model-parallel" (differs per tp rank: sharded regions). Crystal has no dropout;
    this is the hook a dropout layer would fork into."""

    def __init__(self, seed: int, tp_rank: int, device: torch.device):
        self.device = torch.device(device)
        self.states = {}
        for name, s in (("default", seed), ("model-parallel", seed + 2718 + tp_rank)):
            g = torch.Generator(device=self.device)
            g.manual_seed(s)
            self.states[name] = g

    def generator(self, name: str = "model-parallel") -> torch.Generator:
        return self.states[name]

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel"):
        """Run the block with the global RNG of the device set to the named stream, then restore."""
        g = self.states[name]
        cuda = self.device.type == "cuda"
        saved = torch.cuda.get_rng_state(self.device) if cuda else torch.get_rng_state()
        if cuda:
            torch.cuda.set_rng_state(g.get_state(), self.device)
        else:
            torch.set_rng_state(g.get_state())
        try:
            yield
        finally:
            g.set_state(torch.cuda.get_rng_state(self.device) if cuda else torch.get_rng_state())
            if cuda:
                torch.cuda.set_rng_state(saved, self.device)
            else:
                torch.set_rng_state(saved)
