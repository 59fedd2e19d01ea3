"""Zero padding of parameters, one mechanism for every padded dimension.

Some dimensions are padded for speed: the vocabulary (embedding/head rows) to a multiple of 64·tp,
and the FFN inner size (up/gate rows and biases, down columns) to a multiple of 64·tp, so matmuls get
tensor-core friendly shapes and any size splits evenly over tensor parallelism. A padded parameter
carries a true shape (`ParamSpec.true_shape`), the shape of its meaningful block at the start of every dimension; every
entry beyond it is zero, and the mathematics keeps it zero (zero weights give zero activations and zero
gradients; AdamW leaves a zero weight with a zero gradient at zero).

Whatever moves weights between layouts (init, consolidation over tensor parallelism, model files,
Hugging Face export/import) goes through `refit`: a zero tensor of the target shape with the true
block copied in. Values therefore never depend on how much padding a layout has.
"""

from __future__ import annotations

import math

import torch

from .param_spec import param_spec


def pad_to(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return int(math.ceil(n / multiple) * multiple)


def full_shape(p: torch.Tensor) -> tuple:
    """The unsharded shape of a parameter (padding included)."""
    return tuple(param_spec(p).full_shape or p.shape)


def true_shape(p: torch.Tensor) -> tuple:
    """The meaningful shape of a parameter: its full shape less any padding."""
    return tuple(param_spec(p).true_shape or full_shape(p))


def set_true_shape(p: torch.Tensor, shape) -> torch.Tensor:
    param_spec(p).true_shape = tuple(int(n) for n in shape)
    return p


def true_numel(p: torch.Tensor) -> int:
    return math.prod(true_shape(p))


def _beyond(t: torch.Tensor, true: tuple):
    """Views of `t` beyond the true block, one per dimension that has more."""
    for d, n in enumerate(true):
        if t.shape[d] > n:
            yield t.narrow(d, n, t.shape[d] - n)


def fit_problem(t: torch.Tensor, true: tuple, expected: tuple | None = None) -> str | None:
    """Why `t` cannot stand for a parameter whose meaningful block is `true` (None when it can): it must
    cover the block, and hold zeros beyond it. `expected` is the shape named in the message."""
    true = tuple(true)
    shape = tuple(t.shape)
    if len(shape) != len(true) or any(a < b for a, b in zip(shape, true, strict=True)):
        return f"has shape {shape}, expected {tuple(expected or true)}"
    if shape != true and t.device.type != "meta" and any(bool(torch.count_nonzero(x)) for x in _beyond(t, true)):
        return f"has shape {shape} with non-zero values beyond its true shape {true} (padding must be zero)"
    return None


def true_part(t: torch.Tensor, true: tuple) -> torch.Tensor:
    """The meaningful block of `t` (a view), whatever lies beyond it."""
    return t[tuple(slice(0, n) for n in true)]


def refit(t: torch.Tensor, true: tuple, target: tuple) -> torch.Tensor:
    """A tensor of shape `target`: `t`'s true block, zeros elsewhere. `t` itself when already that shape."""
    true, target = tuple(true), tuple(target)
    if len(target) != len(true) or any(a < b for a, b in zip(target, true, strict=True)):
        raise ValueError(f"refit: target shape {target} does not hold the true shape {true}")
    problem = fit_problem(t, true, target)
    if problem:
        raise ValueError(f"refit: tensor {problem}")
    if tuple(t.shape) == target:
        return t
    out = t.new_zeros(target)
    out[tuple(slice(0, n) for n in true)] = true_part(t, true)
    return out


def refit_state(sd: dict, layout: dict, to_true: bool = False) -> dict:
    """Every tensor named in `layout` ({name: (shape, true_shape)}) refit to its padded shape, or to its
    true shape with `to_true`; raises ValueError naming the tensor when one does not fit."""
    out = dict(sd)
    for name, (shape, true) in layout.items():
        if name not in sd:
            continue
        problem = fit_problem(sd[name], true, shape)
        if problem:
            raise ValueError(f"tensor {name!r} {problem}")
        out[name] = refit(sd[name], true, true if to_true else shape)
    return out


def local_true_box(p: torch.Tensor) -> tuple[tuple, tuple]:
    """(start, size) per dimension: the part of this rank's piece `p` that lies in the true block, in
    the unsharded parameter's coordinates; it is `p[:size[0], :size[1], ...]` (a size may be 0, when
    the piece is all padding). Everything else in `p` is padding, zero."""
    spec = param_spec(p)
    true = true_shape(p)
    start, size = [], []
    for d, n in enumerate(p.shape):
        lo = spec.tp_rank * n if d == spec.shard_dim else 0
        start.append(lo)
        size.append(max(0, min(lo + n, true[d]) - lo))
    return tuple(start), tuple(size)
