"""The rotary op: Triton (interpreted on CPU) against the reference, interleaved and rotate-half, fused QKV."""

import pytest
import torch

from megacrystal.ops.rotary import rope_angles, rotary_reference
from tests.ops_util import DEVICE, DTYPES, close, need_triton


def _qk(b, s, hq, hk, d, dtype, gen):
    """q and k as the model makes them: views into a fused QKV laid out by KV-head group."""
    g = hq // hk
    qkv = torch.randn(b, s, hk, g + 2, d, generator=gen).to(DEVICE, dtype).requires_grad_()
    return qkv, qkv[:, :, :, :g].reshape(b, s, hq, d), qkv[:, :, :, g]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (3, 1)])
def test_rotary_matches_reference(heads, fraction, interleaved, dtype):
    need_triton()
    from megacrystal.ops.triton_rotary import rotary_triton

    hq, hk = heads
    gen = torch.Generator().manual_seed(int(fraction * 8) + hq)
    b, s, d = 2, 5, 24
    qkv, q, k = _qk(b, s, hq, hk, d, dtype, gen)
    rot = int(d * fraction)
    # per-sample positions (as with document-restarting positions) for one fraction, shared for the others
    pos = torch.randint(0, 500, (b, s), generator=gen) if fraction == 0.5 else torch.arange(s)
    cos, sin = rope_angles(pos.to(DEVICE), rot, 10000.0)
    dq, dk = (
        torch.randn(b, s, hq, d, generator=gen).to(DEVICE, dtype),
        torch.randn(b, s, hk, d, generator=gen).to(DEVICE, dtype),
    )

    out = rotary_triton(q, k, cos, sin, interleaved)
    grad = torch.autograd.grad(out, qkv, (dq, dk))[0]
    ref = rotary_reference(q, k, cos, sin, interleaved)
    grad_ref = torch.autograd.grad(ref, qkv, (dq, dk))[0]
    for got, want in zip(out, ref, strict=True):
        assert got.dtype == dtype
        close(got, want, dtype)
        assert torch.equal(got[..., rot:], want[..., rot:])  # pass-through dims copied exactly
    close(grad, grad_ref, dtype)


def test_rotary_crystal_7b_head():
    """Crystal's head: 128 dims, the first 32 rotated in interleaved pairs."""
    need_triton()
    from megacrystal.ops.triton_rotary import rotary_triton

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 2, 128, generator=gen).to(DEVICE)
    k = torch.randn(1, 3, 2, 128, generator=gen).to(DEVICE)
    cos, sin = rope_angles(torch.arange(3, device=DEVICE) + 1000, 32, 10000.0)
    for got, want in zip(rotary_triton(q, k, cos, sin, True), rotary_reference(q, k, cos, sin, True), strict=True):
        close(got, want, torch.float32)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rotary_in_place_on_fused_qkv_views(interleaved):
    """In place: only the rotated dims of q and k change, inside the fused QKV buffer; v and the rest stay."""
    need_triton()
    from megacrystal.ops.triton_rotary import rotary_apply

    gen = torch.Generator().manual_seed(3)
    b, s, h, d, rot = 2, 5, 3, 32, 8
    qkv = torch.randn(b, s, h, 3, d, generator=gen).to(DEVICE)
    before = qkv.clone()
    cos, sin = rope_angles(torch.arange(s, device=DEVICE) + 7, rot, 10000.0)
    want_q, want_k = rotary_reference(qkv[:, :, :, 0], qkv[:, :, :, 1], cos, sin, interleaved)
    rotary_apply(qkv[:, :, :, 0], qkv[:, :, :, 1], cos, sin, interleaved, inplace=True)
    close(qkv[:, :, :, 0], want_q, torch.float32)
    close(qkv[:, :, :, 1], want_k, torch.float32)
    assert torch.equal(qkv[..., rot:], before[..., rot:])  # pass-through dims untouched
    assert torch.equal(qkv[:, :, :, 2], before[:, :, :, 2])  # v untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved,fraction", [(True, 0.25), (False, 1.0), (True, 0.0), (False, 0.5)])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)])
def test_qkv_rotary_matches_reference(heads, interleaved, fraction, dtype):
    """Fused split + rotary of the QKV projection's output, and its backward that packs d(qkv)."""
    need_triton()
    from megacrystal.ops.rotary import qkv_rotary_reference
    from megacrystal.ops.triton_rotary import qkv_rotary_triton

    hq, hk = heads
    gen = torch.Generator().manual_seed(hq + int(4 * fraction))
    b, s, d = 2, 5, 24
    rot = int(d * fraction)
    qkv = torch.randn(b, s, hk, hq // hk + 2, d, generator=gen).to(DEVICE, dtype).requires_grad_()
    cos, sin = rope_angles(torch.randint(0, 500, (b, s), generator=gen).to(DEVICE), rot, 10000.0)
    outs = qkv_rotary_triton(qkv, cos, sin, interleaved)
    refs = qkv_rotary_reference(qkv, cos, sin, interleaved)
    grads_out = [torch.randn(o.shape, generator=gen).to(DEVICE, dtype) for o in refs]
    for got, want in zip(outs, refs, strict=True):
        assert got.dtype == dtype and got.shape == want.shape and got.is_contiguous()
        close(got, want, dtype)
    close(torch.autograd.grad(outs, qkv, grads_out)[0], torch.autograd.grad(refs, qkv, grads_out)[0], dtype)
    # only q and k used (v's gradient absent): the packed gradient has zeros in v's slot
    g = torch.autograd.grad(qkv_rotary_triton(qkv, cos, sin, interleaved)[:2], qkv, grads_out[:2])[0]
    assert torch.all(g[:, :, :, -1] == 0)
    close(g, torch.autograd.grad(qkv_rotary_reference(qkv, cos, sin, interleaved)[:2], qkv, grads_out[:2])[0], dtype)
