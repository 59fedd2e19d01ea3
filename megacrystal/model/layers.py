"""Swappable building blocks. The model asks a `Layers` factory for its linears, embedding,
output head and loss; `SerialLayers` makes plain ones, `megacrystal.parallel.tensor` makes
tensor-parallel ones with the same interface. Parameters carry init metadata read by `mup.init_parameters`:

    p._mc_init   "embedding" | "hidden" | "output" | "ones" | "zeros"
    p._mc_name   (optional) the name whose seed to use, e.g. a tied head copy uses "embed.weight"
    p._mc_shard  (optional) callable: full tensor -> this rank's shard (tensor parallelism)
    p._mc_full_shape (optional) the unsharded shape
    p._mc_true_shape (optional) the meaningful shape; entries beyond it are zero padding (see padding.py)

Padded sizes are decided by the factory (`padded_vocab`, `padded_ffn`): the vocabulary and the FFN inner
size are padded to a multiple of 64·tp, so each tensor-parallel shard is a multiple of 64.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.dispatch import op
from .padding import pad_to, set_true_shape
from .wgrad_fusion import linear


def mark(p: nn.Parameter, init: str, name: str | None = None) -> nn.Parameter:
    p._mc_init = init
    if name is not None:
        p._mc_name = name
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
        h.weight._mc_tied_copy = True
        return h

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        return op("cross_entropy", impl)(logits, labels)
