"""Counter-based initial values: any slice of a parameter is drawn without drawing the rest.

Element `i` (row-major index in the parameter's true shape) of the parameter seeded with `key` is a
pure function of (key, i): the i-th output of SplitMix64 seeded with `key` (Steele, Lea & Flood 2014;
passes BigCrush), whose state after i steps is `key + (i+1)·γ`, so any element is reached in O(1).
Its top 53 bits give u in (0, 1), and the truncated normal at ±2σ is its inverse CDF,
σ·√2·erfinv(erf(√2)·(2u−1)) (what `nn.init.trunc_normal_` does with a uniform draw). The arithmetic
is int64 torch ops (wrapping multiplication, masked right shifts) and one fp64 erfinv, rounded to fp32
(then to the parameter's dtype: runs at every precision start from the same point), so it runs on
the parameter's own device (CPU, CUDA, meta) in bounded chunks: a rank holding a slice draws exactly
that slice, and every tp/pp layout holds the serial model's values.

`elements_drawn()` counts the elements drawn in this process (tests check that a rank draws only its
share, and that resuming or `train.init_from` draws nothing).
"""

from __future__ import annotations

import math

import torch

_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
CHUNK = 1 << 22  # elements per batch of temporaries (about 40 bytes each)
_ERF_SQRT2 = math.erf(math.sqrt(2.0))
_drawn = 0


def elements_drawn() -> int:
    return _drawn


def _signed(x: int) -> int:
    """The int64 with the bits of the unsigned 64-bit `x`."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def _srl_(z: torch.Tensor, k: int, out: torch.Tensor) -> torch.Tensor:
    """`out` <- logical right shift of the int64 bits of `z` by `k` (torch's >> is arithmetic)."""
    return torch.bitwise_right_shift(z, k, out=out).bitwise_and_((1 << (64 - k)) - 1)


def splitmix64(key: int, index: torch.Tensor) -> torch.Tensor:
    """Output `index` (int64 tensor, >= 0) of SplitMix64 seeded with `key`, as int64 bits (in place on
    one new tensor and one temporary: this is most of the draw's time on a CPU)."""
    z = index.add(1).mul_(_signed(_GAMMA)).add_(_signed(key))
    t = torch.empty_like(z)
    z.bitwise_xor_(_srl_(z, 30, t)).mul_(_signed(_MIX1))
    z.bitwise_xor_(_srl_(z, 27, t)).mul_(_signed(_MIX2))
    return z.bitwise_xor_(_srl_(z, 31, t))


def splitmix64_reference(key: int, i: int) -> int:
    """The same in Python integers (unsigned), for tests."""
    m = (1 << 64) - 1
    z = (key + (i + 1) * _GAMMA) & m
    z = ((z ^ (z >> 30)) * _MIX1) & m
    z = ((z ^ (z >> 27)) * _MIX2) & m
    return z ^ (z >> 31)


def trunc_normal_at(key: int, index: torch.Tensor, std: float) -> torch.Tensor:
    """fp64 values, normal(0, std) truncated at ±2·std, of the elements `index` of stream `key`."""
    global _drawn
    _drawn += index.numel()
    z = splitmix64(key, index)
    u = _srl_(z, 11, z).double().add_(0.5).mul_(2.0**-53)  # the top 53 bits: u in (0, 1)
    x = torch.erfinv(u.mul_(2.0).sub_(1.0).mul_(_ERF_SQRT2)).mul_(math.sqrt(2.0))
    return x.clamp_(-2.0, 2.0).mul_(std)


@torch.no_grad()
def draw_box(out: torch.Tensor, key: int, std: float, true: tuple, start: tuple) -> None:
    """Fill `out` with the elements of the `true`-shaped stream `key` whose coordinates are
    `start + (index in out)`; `out` lies inside the true block."""
    strides = [math.prod(true[d + 1 :]) for d in range(len(true))]
    dev = out.device
    if out.ndim == 0 or out.numel() == 0:
        return
    inner = [
        torch.arange(s, s + n, device=dev) * st for s, n, st in zip(start[1:], out.shape[1:], strides[1:], strict=True)
    ]
    offset = torch.zeros((), dtype=torch.int64, device=dev)
    for d, a in enumerate(inner):
        offset = offset + a.reshape((-1,) + (1,) * (len(inner) - 1 - d))
    per_row = max(1, math.prod(out.shape[1:]))
    step = max(1, CHUNK // per_row)
    for r in range(0, out.shape[0], step):
        n = min(step, out.shape[0] - r)
        rows = torch.arange(start[0] + r, start[0] + r + n, device=dev) * strides[0]
        index = rows.reshape((-1,) + (1,) * len(inner)) + offset
        out[r : r + n].copy_(trunc_normal_at(key, index, std).float())  # fp32 values in any precision
