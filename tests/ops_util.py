"""Shared bits of the op tests: the device (CUDA when present, else CPU + Triton interpreter),
tolerances per dtype, and a comparison helper."""

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.bfloat16] + ([torch.float16] if DEVICE.type == "cuda" else [])
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


def need_triton():
    return pytest.importorskip("triton")


def close(actual, expected, dtype, scale=1.0):
    """Compare in fp32; `scale` widens the atol for quantities that grow with the reduction size."""
    tol = dict(TOL[dtype])
    tol["atol"] *= scale
    torch.testing.assert_close(actual.float(), expected.float(), **tol)
