"""Shared pieces of the Hugging Face layouts (layouts.py): errors, QKV/rotary permutations, padding refits,
shape lookups with one-line errors, and import plans (`Run`s: which HF rows make each of our rows)."""

from __future__ import annotations

from dataclasses import dataclass

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


def get_shape(shapes: dict, key: str, shape: tuple, where: str) -> str:
    """`key`, checked to be among `shapes` ({name: shape}, metadata only) with shape `shape`."""
    if key not in shapes:
        raise LayoutError(f"{where}: missing tensor {key!r}")
    if tuple(shapes[key]) != tuple(shape):
        raise LayoutError(f"{where}: tensor {key!r} has shape {tuple(shapes[key])}, expected {tuple(shape)}")
    return key


def check_used(shapes: dict, used: set, where: str) -> None:
    extra = sorted(
        k
        for k in shapes
        if k not in used and not k.endswith(IGNORED_SUFFIXES) and not (k.endswith(".attn.bias") and len(shapes[k]) == 4)
    )  # GPT-2 causal-mask buffer
    if extra:
        raise LayoutError(
            f"{where}: unexpected tensor {extra[0]!r}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else "")
        )


# ----------------------------------------------------------------------------- import plans


@dataclass(frozen=True)
class Run:
    """Our rows [at, at + n) are rows [src, src + n) of the HF tensor `key`, or its columns when
    `transposed` (a Conv1D weight stored [in, out]); our columns are its other dimension, unchanged."""

    at: int
    n: int
    key: str
    src: int = 0
    transposed: bool = False


def whole(key: str, rows: int, transposed: bool = False) -> list[Run]:
    return [Run(0, rows, key, 0, transposed)]


def qkv_runs(q: tuple, k: tuple, v: tuple, hq: int, hk: int, d: int, transposed: bool = False) -> list[Run]:
    """Our grouped fused QKV rows ([q of group j | k_j | v_j] for each KV head j, as `qkv_join`) from
    q, k, v given as (HF key, first row there): three runs per KV head."""
    g = hq // hk
    runs = []
    for j in range(hk):
        at = j * (g + 2) * d
        runs.append(Run(at, g * d, q[0], q[1] + j * g * d, transposed))
        runs.append(Run(at + g * d, d, k[0], k[1] + j * d, transposed))
        runs.append(Run(at + (g + 1) * d, d, v[0], v[1] + j * d, transposed))
    return runs


def need(cond: bool, fmt: str, what: str) -> None:
    if not cond:
        raise LayoutError(f"--format {fmt}: {what}")


def positive_int(conf: dict, key: str, where: str) -> int:
    v = conf.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise LayoutError(f"{where}: {key} must be a positive integer, got {v!r}")
    return v
