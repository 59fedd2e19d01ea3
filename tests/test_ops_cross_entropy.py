"""The cross-entropy op: Triton (interpreted on CPU) against the reference, and the vocab-parallel pieces."""

import itertools

import pytest
import torch

from megacrystal.ops.cross_entropy import ce_grad_reference, ce_stats_reference, cross_entropy_reference
from tests.ops_util import DEVICE, DTYPES, close, need_triton


def _case(shape, vocab, dtype, seed, pad=0):
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.randn(*shape, vocab, generator=g)
    if pad:
        x[..., vocab - pad :] = float("-inf")  # padded vocabulary rows, as the model's head makes them
    labels = torch.randint(0, vocab - pad, shape, generator=g)
    labels.view(-1)[::5] = -100
    dloss = torch.rand(shape, generator=g)
    return x.to(DEVICE, dtype).requires_grad_(), labels.to(DEVICE), dloss.to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,vocab,pad", [((3, 5), 1000, 24), ((7,), 5000, 0), ((2, 2), 4096, 0)])
def test_cross_entropy_matches_reference(shape, vocab, pad, dtype):
    need_triton()
    from megacrystal.ops.triton_cross_entropy import cross_entropy_triton

    x, labels, dloss = _case(shape, vocab, dtype, vocab, pad)
    loss = cross_entropy_triton(x, labels)
    grad = torch.autograd.grad(loss, x, dloss)[0]
    loss_ref = cross_entropy_reference(x, labels)
    grad_ref = torch.autograd.grad(loss_ref, x, dloss)[0]
    assert loss.dtype == torch.float32 and loss.shape == labels.shape
    assert grad.dtype == dtype
    close(loss, loss_ref, torch.float32, scale=10)  # fp32 math on both sides whatever the input dtype
    assert torch.all(loss[labels == -100] == 0) and torch.all(grad[labels == -100] == 0)
    close(grad, grad_ref, dtype)


def test_cross_entropy_pieces_compose_vocab_parallel():
    """Three vocabulary shards combined as a tensor-parallel loss would: same loss and gradient."""
    need_triton()
    from megacrystal.ops.cross_entropy import rescale_sumexp
    from megacrystal.ops.triton_cross_entropy import ce_grad, ce_stats

    vocab, bounds = 1000, [0, 300, 700, 1000]
    x, labels, dloss = _case((4, 3), vocab, torch.float32, 1, pad=100)
    x2, lab, dl = x.detach().reshape(-1, vocab), labels.reshape(-1), dloss.reshape(-1)
    loss_ref = cross_entropy_reference(x2, lab)
    grad_ref = torch.autograd.grad(cross_entropy_reference(x.reshape(-1, vocab), lab), x, dl.view(-1))[0]
    for stats, grad_fn in ((ce_stats, ce_grad), (ce_stats_reference, ce_grad_reference)):
        parts = [stats(x2[:, a:b].contiguous(), lab, a) for a, b in itertools.pairwise(bounds)]
        m = torch.stack([p[0] for p in parts]).max(0).values
        s = sum(rescale_sumexp(p[0], p[1], m) for p in parts)
        t = sum(p[2] for p in parts)
        lse = m + s.log()
        loss = torch.where(lab == -100, torch.zeros_like(lse), lse - t)
        close(loss, loss_ref, torch.float32)
        grad = torch.cat([grad_fn(x2[:, a:b].contiguous(), lab, lse, dl, a) for a, b in itertools.pairwise(bounds)], 1)
        close(grad, grad_ref.reshape(-1, vocab), torch.float32)
    # the last shard holds only padding (-inf): it contributes nothing and no NaN
    m3, s3, t3 = ce_stats(x2[:, 900:].contiguous(), lab, 900)
    assert torch.isneginf(m3).all() and torch.all(rescale_sumexp(m3, s3, m) == 0) and torch.all(t3 == 0)
