"""The ring attention's block kernels (model/attention_lse.py): output, log-sum-exp and the backward
from given (out, lse) equal plain attention and autograd, for every kernel this machine has; causal,
unmasked and document-masked blocks (rows without any key included), GQA. On CPU in fp64 within 1e-12;
the CUDA kernels (sdpa_flash, sdpa_efficient) run where a GPU is present (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import pytest
import torch

from megacrystal.model.attention_lse import block_backward, block_forward, pick_kernel

CUDA = torch.cuda.is_available()


def _reference(q, k, v, scale, allowed):
    """fp64 attention with autograd: (out, lse); a row without keys gives out 0, lse -inf."""
    g = q.shape[2] // k.shape[2]
    kx, vx = k.repeat_interleave(g, 2), v.repeat_interleave(g, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, kx) * scale
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
    return torch.einsum("bhqk,bkhd->bqhd", p, vx), lse


def _case(kind: str, lq: int, lk: int, b: int = 2):
    if kind == "causal":
        return True, torch.ones(lq, lk, dtype=torch.bool).tril().expand(b, lq, lk)
    if kind == "full":
        return False, torch.ones(b, lq, lk, dtype=torch.bool)
    # global key indices 4..; row 0: queries 3.. are in a document starting after every key here (no
    # key at all), row 1: a document starting at 6 (two keys masked)
    starts = torch.tensor([[0] * 3 + [20] * (lq - 3), [6] * lq])[:b]
    allowed = (torch.arange(lk) + 4)[None, None, :] >= starts[:, :, None]
    return False, allowed


def _check(kernel, dtype, device, kind, tol):
    torch.manual_seed(0)
    b, lq, lk, hq, hk, d = 2, 8, 8 if kind == "causal" else 6, 4, 2, 16
    causal, allowed = _case(kind, lq, lk, b)
    q, k, v = (torch.randn(b, n, h, d, dtype=torch.float64) for n, h in ((lq, hq), (lk, hk), (lk, hk)))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    want, want_lse = _reference(q, k, v, 0.25, allowed)
    dout = torch.randn_like(want)
    want.backward(dout)
    dev = [t.detach().to(device, dtype) for t in (q, k, v)]
    mask = None if kind != "doc" else allowed.to(device)
    out, lse, aux = block_forward(kernel, *dev, 0.25, causal, mask)
    dq, dk, dv = block_backward(kernel, dout.to(device, dtype), *dev, out.to(dtype), lse, aux, 0.25, causal, mask)
    visible = allowed.any(-1)
    assert torch.equal(torch.isinf(lse.cpu()), ~visible[:, None].expand_as(lse)), "rows without keys: lse -inf"
    for name, have, exp in (
        ("out", out, want),
        ("lse", torch.where(visible[:, None], lse.cpu().double(), 0), torch.where(visible[:, None], want_lse, 0)),
        ("dq", dq, q.grad),
        ("dk", dk, k.grad),
        ("dv", dv, v.grad),
    ):
        err = float((have.detach().cpu().double() - exp.detach()).norm() / exp.detach().norm())
        assert err <= tol, (kernel, kind, name, err)


@pytest.mark.parametrize("kind", ["causal", "full", "doc"])
@pytest.mark.parametrize("kernel", ["math", "sdpa_cpu"])
def test_cpu_block_kernels_equal_attention_and_autograd(kernel, kind):
    _check(kernel, torch.float64, torch.device("cpu"), kind, 1e-12)


@pytest.mark.skipif(not CUDA, reason="CUDA kernels")
@pytest.mark.parametrize("kind", ["causal", "full", "doc"])
@pytest.mark.parametrize("kernel", ["sdpa_flash", "sdpa_efficient", "math"])
def test_cuda_block_kernels_equal_attention_and_autograd(kernel, kind):
    if (kernel == "sdpa_flash" and kind == "doc") or (kernel == "sdpa_efficient" and kind != "doc"):
        pytest.skip("flash: no mask; efficient: masks only (pick_kernel)")
    dtype = torch.float32 if kernel != "sdpa_flash" else torch.bfloat16
    _check(kernel, dtype, torch.device("cuda"), kind, 2e-2 if dtype == torch.bfloat16 else 1e-4)


def test_kernel_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_kernel("math", cuda, torch.bfloat16, False) == "math"
    assert pick_kernel("auto", cpu, torch.float64, True) == "sdpa_cpu"
    assert pick_kernel("sdpa", cuda, torch.bfloat16, False) == "sdpa_flash"
    assert pick_kernel("auto", cuda, torch.bfloat16, True) == "sdpa_efficient"
    assert pick_kernel("auto", cuda, torch.float32, True) == "sdpa_efficient"
    assert pick_kernel("auto", cuda, torch.float32, False) == "math"
    assert pick_kernel("auto", cuda, torch.float64, False) == "math"
