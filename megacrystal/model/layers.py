"""Swappable building blocks. The model asks a `Layers` factory for its linears, embedding,
output head and loss; `SerialLayers` makes plain ones, `megacrystal.parallel.tensor` makes
tensor-parallel ones with the same interface (`LayerFactory`, the Protocol both follow). Every
parameter carries a `ParamSpec` (model/param_spec.py): how `mup.init_parameters` draws it, and, from
the tensor-parallel factory, how it is sharded.

Padded sizes are decided by the factory (`padded_vocab`, `padded_ffn`): the vocabulary and the FFN inner
size are padded to a multiple of 64·tp, so each tensor-parallel shard is a multiple of 64.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.dispatch import op
from .padding import pad_to, set_true_shape
from .param_spec import param_spec
from .wgrad_fusion import linear


class LayerFactory(Protocol):
    """What the model asks its layer factory for. `SerialLayers` (here) and
    `parallel.tensor.TensorParallelLayers` implement it; a new kind of parallelism is a new factory."""

    tp_size: int  # how many ranks share each layer: the model builds 1/tp_size of the heads/features

    def padded_vocab(self, vocab: int) -> int: ...

    def padded_ffn(self, ffn: int) -> int: ...

    def column(self, in_features: int, out_features: int, bias: bool, init: str = "hidden") -> nn.Module:
        """A linear whose outputs may be split over ranks (QKV, FFN up/gate)."""
        ...

    def row(self, in_features: int, out_features: int, bias: bool, init: str = "output") -> nn.Module:
        """A linear whose inputs may be split over ranks, outputs summed (attention out, FFN down)."""
        ...

    def embedding(self, vocab: int, hidden: int) -> nn.Module: ...

    def head(self, vocab: int, hidden: int, tied: nn.Module | None) -> nn.Module:
        """The output head; `tied`: the embedding whose weight it shares."""
        ...

    def detached_tied_head(self, vocab: int, hidden: int) -> nn.Module:
        """A tied head on a pipeline stage without the embedding: its own copy, seeded like it."""
        ...

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        """Per-token loss (fp32, or fp64 for fp64 logits); labels -100 are ignored."""
        ...


def mark(p: nn.Parameter, init: str, name: str | None = None) -> nn.Parameter:
    """Record how `p` is initialised (and under which name's seed, when not its own)."""
    spec = param_spec(p)
    spec.init = init
    if name is not None:
        spec.seed_name = name
    return p


class Linear(nn.Module):
    """y = x W^T + b with W [out, in]."""

    fuses_wgrad = True  # model.grad_accum_fusion applies (model/wgrad_fusion.py)

    def __init__(self, in_features: int, out_features: int, bias: bool, init: str):
        super().__init__()
        self.weight = mark(nn.Parameter(torch.empty(out_features, in_features)), init)
        self.bias = mark(nn.Parameter(torch.zeros(out_features)), "zeros") if bias else None

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class Embedding(nn.Module):
    def __init__(self, vocab: int, padded_vocab: int, hidden: int):
        super().__init__()
        self.vocab_size, self.padded_vocab = vocab, padded_vocab
        self.weight = set_true_shape(
            mark(nn.Parameter(torch.empty(padded_vocab, hidden)), "embedding"), (vocab, hidden)
        )

    def forward(self, tokens):
        return F.embedding(tokens, self.weight)


class Head(nn.Module):
    """Logits over the (padded) vocabulary; padded entries are -inf so they are never predicted."""

    def __init__(self, vocab: int, padded_vocab: int, hidden: int, tied: Embedding | None):
        super().__init__()
        self.vocab_size, self.padded_vocab = vocab, padded_vocab
        self._tied = (tied,) if tied is not None else ()  # not a submodule: no duplicate state-dict key
        if tied is None:
            self.weight = set_true_shape(
                mark(nn.Parameter(torch.empty(padded_vocab, hidden)), "hidden"), (vocab, hidden)
            )

    def head_weight(self):
        return self._tied[0].weight if self._tied else self.weight

    def forward(self, h):
        logits = F.linear(h, self.head_weight())
        if self.padded_vocab > self.vocab_size:
            logits[..., self.vocab_size :] = float("-inf")
        return logits


class PaddedSizes:
    """The one place padded sizes are decided: multiples of 64 per tensor-parallel shard."""

    tp_size = 1
    vocab_multiple = 64
    ffn_multiple = 64

    def padded_vocab(self, vocab: int) -> int:
        return pad_to(vocab, self.vocab_multiple * self.tp_size)

    def padded_ffn(self, ffn: int) -> int:
        return pad_to(ffn, self.ffn_multiple * self.tp_size)


class SerialLayers(PaddedSizes):
    """The 1-rank factory. `tp_size` tells the model how many heads/features each rank holds."""

    def column(self, in_features: int, out_features: int, bias: bool, init: str = "hidden") -> nn.Module:
        return Linear(in_features, out_features, bias, init)

    def row(self, in_features: int, out_features: int, bias: bool, init: str = "output") -> nn.Module:
        return Linear(in_features, out_features, bias, init)

    def embedding(self, vocab: int, hidden: int) -> nn.Module:
        return Embedding(vocab, self.padded_vocab(vocab), hidden)

    def head(self, vocab: int, hidden: int, tied: nn.Module | None) -> nn.Module:
        return Head(vocab, self.padded_vocab(vocab), hidden, tied)

    def detached_tied_head(self, vocab: int, hidden: int) -> nn.Module:
        """A tied head on a stage without the embedding (pipeline): its own copy, seeded like the embedding."""
        h = Head(vocab, self.padded_vocab(vocab), hidden, None)
        mark(h.weight, "embedding", name="embed.weight")
        param_spec(h.weight).tied_copy = True
        return h

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        return op("cross_entropy", impl)(logits, labels)
