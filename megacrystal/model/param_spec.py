"""What the engine knows about one parameter beyond its values: `ParamSpec`, one per parameter, read
through `param_spec(p)` (the only accessor; a parameter without one gets the defaults).

    init               "embedding" | "hidden" | "output" | "ones" | "zeros": how `mup.init_parameters` draws it
    seed_name          the name whose seed to draw with (a tied head copy uses "embed.weight")
    tied_copy          the last pipeline stage's copy of a tied embedding (grads summed with the original)
    full_shape         the unsharded shape (padding included); None: the parameter's own shape
    shard_dim          tensor parallelism: the dimension split over tp (None: replicated over tp)
    tp_size, tp_rank   how many pieces along `shard_dim`, and which one this rank holds
    true_shape         the meaningful block; entries beyond it are zero padding (see padding.py)
    sequence_parallel  replicated over tp but sees a slice of the sequence: grads summed over tp
    wgrad_fusion       "torch" | "cuda": the backward accumulates the weight gradient straight into
                       `main_grad` (wgrad_fusion.py); None: an ordinary weight gradient
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ParamSpec:
    init: str | None = None
    seed_name: str | None = None
    tied_copy: bool = False
    full_shape: tuple | None = None
    shard_dim: int | None = None
    tp_size: int = 1
    tp_rank: int = 0
    true_shape: tuple | None = None
    sequence_parallel: bool = False
    wgrad_fusion: str | None = None

    @property
    def sharded(self) -> bool:
        return self.shard_dim is not None

    def shard(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's piece of the unsharded tensor `full` (`full` itself when not sharded)."""
        if self.shard_dim is None:
            return full
        return full.chunk(self.tp_size, self.shard_dim)[self.tp_rank].contiguous()


def param_spec(p: torch.Tensor) -> ParamSpec:
    """The spec of `p`, created (all defaults) on first use."""
    spec = getattr(p, "param_spec", None)
    if spec is None:
        spec = ParamSpec()
        p.param_spec = spec
    return spec
