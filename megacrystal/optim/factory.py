"""The engine's optimizer for `optim.impl` and the parallel layout, and its clip-then-step."""

from __future__ import annotations

from .adamw import AdamW
from .distributed import DistributedOptimizer
from .fused_adamw import FusedAdamW


def make_optimizer(impl: str, buffers, groups: list[dict], o, names: dict, overlap_param_gather: bool = False):
    """`impl` "cuda": the fused kernel over the flat buffers (ZeRO-1 or replicated); "torch": the
    distributed optimizer when the buffers are sharded, else the replicated AdamW. `o`: the OptimConfig.
    `overlap_param_gather`: ZeRO-1 leaves its parameter all-gathers to the next forward (`parallel.param_gather`)."""
    if impl == "cuda":
        return FusedAdamW(
            buffers, groups, o.beta1, o.beta2, o.eps, names=names, overlap_param_gather=overlap_param_gather
        )
    if buffers.distributed:
        return DistributedOptimizer(buffers, groups, o.beta1, o.beta2, o.eps, overlap_param_gather=overlap_param_gather)
    return AdamW(groups, o.beta1, o.beta2, o.eps, names=names)


def clip_and_step(optimizer, buffers, norm: float, max_norm: float, lr: float, nonfinite: bool | None = None) -> bool:
    """Clip to `max_norm` (the fused step folds the coefficient in instead of scaling the gradients), step.
    False when the optimizer skipped the update (the fused step found a non-finite gradient; no state
    changed), which the engine reports as a skipped step."""
    if getattr(optimizer, "folds_clip", False):
        optimizer.clip_coef = buffers.clip_coef(norm, max_norm)
    else:
        buffers.clip_(norm, max_norm)
    if nonfinite is None:
        optimizer.step(lr)
    else:  # the fused step: the world's verdict on its gradients came with the engine's norm read
        optimizer.step(lr, found_nonfinite=nonfinite)
    return not getattr(optimizer, "skipped_last", False)
