"""The CUDA kernels on a GPU (skipped without CUDA or without the built library; benchmarks/gpu_check.sh
builds it and runs these): every check of `megacrystal.kernel_checks` (the ones `megacrystal doctor --verify`
runs on a user's GPU), one test each."""

import pytest
import torch

from megacrystal import kernel_checks
from megacrystal.compiled import cuda_kernels

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def lib():
    k = cuda_kernels.library()
    if k is None:
        pytest.skip(f"CUDA kernels {cuda_kernels.why_missing()}")
    return k


@pytest.mark.parametrize("name", list(kernel_checks.CHECKS))
def test_kernel_check(lib, name):
    kernel_checks.CHECKS[name](lib)
