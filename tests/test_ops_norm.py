"""The LayerNorm/RMSNorm op: Triton (interpreted on CPU) against the reference, strided input, dispatch."""

import pytest
import torch

from megacrystal.ops.norm import norm_reference
from tests.ops_util import DEVICE, DTYPES, close, need_triton


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rms,bias", [(False, True), (True, False), (True, True)])
@pytest.mark.parametrize("shape", [(3, 7, 100), (2, 33), (1, 5, 256), (37, 1000)])
def test_norm_matches_reference(shape, rms, bias, dtype):
    need_triton()
    from megacrystal.ops.triton_norm import norm_triton

    g = torch.Generator().manual_seed(hash((shape, rms, bias)) % 1000)
    n = shape[-1]
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(DEVICE, dtype).requires_grad_()
    w = (1 + 0.2 * torch.randn(n, generator=g)).to(DEVICE, dtype).requires_grad_()
    b = (0.2 * torch.randn(n, generator=g)).to(DEVICE, dtype).requires_grad_() if bias else None
    dy = torch.randn(shape, generator=g).to(DEVICE, dtype)
    params = [x, w] + ([b] if bias else [])

    y = norm_triton(x, w, b, 1e-5, rms)
    grads = torch.autograd.grad(y, params, dy)
    y_ref = norm_reference(x, w, b, 1e-5, rms)
    grads_ref = torch.autograd.grad(y_ref, params, dy)

    assert y.dtype == dtype and y.shape == x.shape
    close(y, y_ref, dtype)
    close(grads[0], grads_ref[0], dtype)
    rows = x.numel() // n  # weight/bias grads are sums over rows
    for got, want in zip(grads[1:], grads_ref[1:], strict=True):
        assert got.dtype == dtype
        close(got, want, dtype, scale=max(1.0, rows**0.5))


def test_norm_strided_input_and_model_dispatch():
    need_triton()
    from megacrystal.ops.dispatch import op

    x = torch.randn(4, 6, 64, device=DEVICE)[:, ::2]  # non-contiguous rows
    w, b = torch.rand(64, device=DEVICE), torch.rand(64, device=DEVICE)
    close(op("norm", "triton")(x, w, b, 1e-5, False), norm_reference(x, w, b, 1e-5, False), torch.float32)
