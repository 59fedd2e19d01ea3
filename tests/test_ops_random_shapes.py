"""Every Triton op against its reference at shapes drawn at random (seeded): odd hidden sizes, GQA
ratios, rotary fractions, vocabularies that are not multiples of the chunk."""

import random

import pytest
import torch

from megacrystal.ops.cross_entropy import cross_entropy_reference
from megacrystal.ops.norm import norm_reference
from megacrystal.ops.rotary import rope_angles, rotary_reference
from megacrystal.ops.swiglu import swiglu_reference
from tests.ops_util import DEVICE, close, need_triton

SEEDS = [11, 12, 13]


def _grads(fn, inputs, grad_out):
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return outs, torch.autograd.grad(outs, leaves, grad_out(outs))


def _check(fn_a, fn_b, inputs, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)

    def grad_out(outs):
        return [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in outs]

    outs_a, grads_a = _grads(fn_a, inputs, grad_out)
    gen.manual_seed(0)
    outs_b, grads_b = _grads(fn_b, inputs, grad_out)
    for a, b in zip(outs_a + grads_a, outs_b + grads_b, strict=True):
        close(a, b, dtype, scale=4)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_norm(seed):
    need_triton()
    from megacrystal.ops.triton_norm import norm_triton

    r = random.Random(seed)
    rows, n, rms = r.randint(1, 40), r.randint(2, 700), r.random() < 0.5
    x = torch.randn(rows, n).to(DEVICE).requires_grad_()
    w = torch.rand(n).to(DEVICE).requires_grad_()
    b = None if rms else torch.randn(n).to(DEVICE).requires_grad_()
    _check(lambda *a: norm_triton(*a, 1e-5, rms), lambda *a: norm_reference(*a, 1e-5, rms), [x, w, b])


@pytest.mark.parametrize("seed", SEEDS)
def test_random_rotary(seed):
    need_triton()
    from megacrystal.ops.triton_rotary import rotary_triton

    r = random.Random(seed)
    hk = r.randint(1, 3)
    hq, d = hk * r.randint(1, 3), 2 * r.randint(2, 40)
    rot = 2 * r.randint(1, d // 2)
    b, s, inter = r.randint(1, 3), r.randint(1, 9), r.random() < 0.5
    q = torch.randn(b, s, hq, d).to(DEVICE).requires_grad_()
    k = torch.randn(b, s, hk, d).to(DEVICE).requires_grad_()
    cos, sin = rope_angles(torch.arange(s, device=DEVICE), rot, 10000.0)
    _check(
        lambda q, k: rotary_triton(q, k, cos, sin, inter), lambda q, k: rotary_reference(q, k, cos, sin, inter), [q, k]
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_random_swiglu_and_cross_entropy(seed):
    need_triton()
    from megacrystal.ops.triton_cross_entropy import cross_entropy_triton
    from megacrystal.ops.triton_swiglu import swiglu_triton

    r = random.Random(seed)
    shape = (r.randint(1, 5), r.randint(1, 3000))
    up, gate = (torch.randn(shape).to(DEVICE).requires_grad_() for _ in range(2))
    _check(swiglu_triton, swiglu_reference, [up, gate])
    rows, vocab = r.randint(1, 9), r.randint(2, 9000)
    logits = (3 * torch.randn(rows, vocab)).to(DEVICE).requires_grad_()
    labels = torch.randint(0, vocab, (rows,)).to(DEVICE)
    _check(lambda x: cross_entropy_triton(x, labels), lambda x: cross_entropy_reference(x, labels), [logits])
