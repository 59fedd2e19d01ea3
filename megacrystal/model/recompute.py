"""Activation recomputation (`model.recompute`): none, selective, full — Megatron's meanings.

full      each group of blocks is checkpointed (`torch.utils.checkpoint`): only the group's input is
          kept, the whole group runs forward again in the backward. `recompute_method: uniform` cuts the
          chunk's blocks into groups of `recompute_num_layers` (default 1: every block alone); `block`
          checkpoints the first `recompute_num_layers` blocks of each pipeline chunk one by one and
          keeps everything of the rest (default: all of them).
selective the matmul outputs are kept (QKV; up and gate) and the two parameter-free pieces between
          matmuls are recomputed in the backward: the attention core (rotary + attention) and the MLP
          activation (SwiGLU). Neither the tensors they save nor their outputs (the inputs of the
          attention-out and down projections) are kept: `recompute_into` drops the output after its
          consumer ran and rebuilds it, once, when the backward first needs it.

Memory (`activation_elements`, per token and layer, in elements of the activation dtype; h hidden,
d head dim, a heads, g KV heads, f FFN inner size as padded, all per tensor-parallel rank) for the fused
kernels and flash attention (what runs on GPUs; Korthikanti et al. 2022's accounting without dropout,
with SwiGLU, and with flash attention's O(s) softmax statistics instead of the s^2 scores):
    none       2h (norm inputs) + 2h (norm outputs: QKV and up/gate inputs) + h + 2gd (q, k, v)
               + h (attention output = out-projection input) + 3f (up, gate, SwiGLU output) = 6h + 2gd + 3f
    selective  none - h (attention output) - f (SwiGLU output); q, k, v are kept as the QKV output
               (the same size) = 5h + 2gd + 2f
    full       h (the block input; one block's `none` is alive again during its backward)
plus a (flash attention's fp32 log-sum-exp per head) and 2 fp32 per norm (mean, rstd) except under full.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.utils.checkpoint

from .padding import pad_to


def recompute_groups(n: int, mode: str, method: str | None, num_layers: int | None) -> list[tuple[int, int, bool]]:
    """[(first, end, checkpointed)] covering blocks 0..n-1 of one chunk."""
    if mode != "full" or n == 0:
        return [(0, n, False)]
    if method == "block":
        k = min(num_layers or n, n)
        return [(i, i + 1, True) for i in range(k)] + ([(k, n, False)] if k < n else [])
    k = num_layers or 1
    return [(i, min(i + k, n), True) for i in range(0, n, k)]


def run_blocks(blocks, h, args: tuple, checkpointed: bool):
    """h through `blocks` in turn, each called as block(h, *args); `checkpointed`: as one checkpoint."""

    def run(x, *a):
        for b in blocks:
            x = b(x, *a)
        return x

    if checkpointed:
        with torch.utils.checkpoint.set_checkpoint_early_stop(False):  # compiled blocks recompute in full
            return torch.utils.checkpoint.checkpoint(run, h, *args, use_reentrant=False)
    return run(h, *args)


class _Holder:
    """What one `recompute_into` call shares between the consumer's backward and its own: the
    function and, once rebuilt in the backward, its output with the graph back to the kept inputs."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.out = self.inputs = None

    def rebuild(self, saved: tuple):
        if self.out is None:
            self.inputs = [t.detach().requires_grad_(t.requires_grad) for t in saved]
            with torch.enable_grad():
                self.out = self.fn(*self.inputs)
        return self.out


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, holder: _Holder, *args):
        ctx.holder = holder
        ctx.save_for_backward(*args)
        return holder.fn(*args)  # autograd records nothing inside a Function's forward

    @staticmethod
    def backward(ctx, grad):
        holder = ctx.holder
        out = holder.rebuild(ctx.saved_tensors)
        inputs = holder.inputs
        holder.out = holder.inputs = None
        with torch.enable_grad():
            need = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, need, grad, allow_unused=True) if need else [])
        return (None, *[next(grads) if t.requires_grad else None for t in inputs])


def recompute_into(fn: Callable, args: tuple, consumer: Callable) -> torch.Tensor:
    """consumer(fn(*args)), keeping only `args` for the backward: nothing `fn` saves, and not its output
    (which `consumer` saves for its weight gradient): both are rebuilt by one rerun of `fn` when the
    backward reaches the consumer. `fn` must be deterministic and have no parameters."""
    if not torch.is_grad_enabled():
        return consumer(fn(*args))
    holder = _Holder(fn)
    y = _Recompute.apply(holder, *args)
    ptr, n, dtype = y.data_ptr(), y.numel(), y.dtype

    def pack(t):
        if t.data_ptr() == ptr and t.numel() == n and t.dtype == dtype and t.is_contiguous():
            return ("rebuild", tuple(t.shape), t.dtype)
        return t

    def unpack(p):
        if isinstance(p, tuple):
            return holder.rebuild(saved).detach().view(p[1])
        return p

    saved = args
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return consumer(y)


def activation_elements(cfg, mode: str | None = None, tp: int = 1) -> float:
    """Activation elements kept per token and layer for `mode` (default: the config's), by the
    accounting in the module docstring (fused kernels, flash attention; per tensor-parallel rank
    without sequence parallelism's split of the h-sized terms, which divides everything by tp)."""
    mode = mode or cfg.recompute
    h, d = cfg.hidden_size, cfg.hidden_size // cfg.num_heads
    g, f = cfg.num_kv_heads // tp, pad_to(cfg.ffn_hidden_size, 64 * tp) / tp  # the FFN as padded
    if mode == "full":
        return float(h)
    qkv = h / tp + 2 * g * d
    if mode == "selective":
        return 4 * h + qkv + 2 * f
    return 4 * h + qkv + h / tp + 3 * f
