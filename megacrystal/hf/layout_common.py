"""Shared pieces of the Hugging Face layouts (layouts.py): errors, QKV/rotary permutations, padding refits,
tensor lookups with one-line errors."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..model.padding import refit_state
from ..model.transformer import serial_layout

# buffers some HF checkpoints carry that are not parameters
IGNORED_SUFFIXES = (".attn.masked_bias", "rotary_emb.inv_freq")


class LayoutError(ValueError):
    """The model cannot be written in, or read from, a layout; the message says why."""


# ----------------------------------------------------------------------------- tensor helpers


def qkv_split(t: torch.Tensor, hq: int, hk: int, d: int):
    """Our grouped fused QKV (rows) -> q [hq*d, ...], k [hk*d, ...], v [hk*d, ...]."""
    g = hq // hk
    w = t.reshape(hk, g + 2, d, *t.shape[1:])
    rest = tuple(t.shape[1:])
    return (
        w[:, :g].reshape((hq * d,) + rest),
        w[:, g].reshape((hk * d,) + rest),
        w[:, g + 1].reshape((hk * d,) + rest),
    )


def qkv_join(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hq: int, hk: int, d: int) -> torch.Tensor:
    g = hq // hk
    rest = tuple(q.shape[1:])
    parts = [q.reshape((hk, g, d) + rest), k.reshape((hk, 1, d) + rest), v.reshape((hk, 1, d) + rest)]
    return torch.cat(parts, dim=1).reshape(((hq + 2 * hk) * d,) + rest)


def interleaved_to_half(t: torch.Tensor, heads: int, d: int) -> torch.Tensor:
    """Permute each head's rows (evens, then odds) so rotate-half RoPE equals interleaved RoPE."""
    perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])
    rest = tuple(t.shape[1:])
    return t.reshape((heads, d) + rest)[:, perm].reshape(t.shape)


def true_shapes(cfg: ModelConfig, sd: dict) -> dict:
    """Our serial state dict with every padded tensor cut to its true shape."""
    try:
        return refit_state(sd, serial_layout(cfg), to_true=True)
    except ValueError as e:
        raise LayoutError(f"model state: {e}") from None


def serial_shapes(cfg: ModelConfig, sd: dict) -> dict:
    """A state dict of true shapes padded (zeros) to the serial model's shapes."""
    return {k: x.contiguous() for k, x in refit_state(sd, serial_layout(cfg)).items()}


def get_tensor(tensors: dict, key: str, shape: tuple, where: str) -> torch.Tensor:
    if key not in tensors:
        raise LayoutError(f"{where}: missing tensor {key!r}")
    t = tensors[key]
    if tuple(t.shape) != tuple(shape):
        raise LayoutError(f"{where}: tensor {key!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


def check_used(tensors: dict, used: set, where: str) -> None:
    extra = sorted(
        k
        for k in tensors
        if k not in used
        and not k.endswith(IGNORED_SUFFIXES)
        and not (k.endswith(".attn.bias") and tensors[k].dim() == 4)
    )  # GPT-2 causal-mask buffer
    if extra:
        raise LayoutError(
            f"{where}: unexpected tensor {extra[0]!r}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else "")
        )


def need(cond: bool, fmt: str, what: str) -> None:
    if not cond:
        raise LayoutError(f"--format {fmt}: {what}")


def positive_int(conf: dict, key: str, where: str) -> int:
    v = conf.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise LayoutError(f"{where}: {key} must be a positive integer, got {v!r}")
    return v
