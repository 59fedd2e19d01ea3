"""The SwiGLU op: Triton (interpreted on CPU) against the reference."""

import pytest
import torch

from megacrystal.ops.swiglu import swiglu_reference
from tests.ops_util import DEVICE, DTYPES, close, need_triton


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 172), (5, 1000), (4097,)])
def test_swiglu_matches_reference(shape, dtype):
    need_triton()
    from megacrystal.ops.triton_swiglu import swiglu_triton

    g = torch.Generator().manual_seed(len(shape))
    up = (2 * torch.randn(shape, generator=g)).to(DEVICE, dtype).requires_grad_()
    gate = (3 * torch.randn(shape, generator=g)).to(DEVICE, dtype).requires_grad_()
    dy = torch.randn(shape, generator=g).to(DEVICE, dtype)
    y = swiglu_triton(up, gate)
    gu, gg = torch.autograd.grad(y, [up, gate], dy)
    y_ref = swiglu_reference(up, gate)
    gu_ref, gg_ref = torch.autograd.grad(y_ref, [up, gate], dy)
    assert y.dtype == dtype and gu.dtype == dtype and gg.dtype == dtype
    close(y, y_ref, dtype, scale=4)
    close(gu, gu_ref, dtype, scale=4)
    close(gg, gg_ref, dtype, scale=4)
