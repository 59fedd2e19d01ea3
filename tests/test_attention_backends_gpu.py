"""Every flash flavour installed on this GPU against SDPA (skipped without CUDA): outputs and
gradients of q, k, v within bf16 tolerance, causal, with GQA, with and without document masking
(varlen); then fwd+bwd timings printed (run with -s; benchmarks/gpu_check.sh keeps them)."""

import pytest
import torch

from megacrystal.model import attention as A
from megacrystal.model import flash_backends as fb

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _flavours():
    if not torch.cuda.is_available():
        return []
    cap = torch.cuda.get_device_capability()
    return [n for n in fb.MODULES if fb.module(n) is not None and fb.supported_capability(n, cap)]


def _inputs(b=2, s=1024, hq=16, hk=4, d=128, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda h: torch.randn(b, s, h, d, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
    seg = torch.zeros(b, s, dtype=torch.long, device="cuda")
    seg[0, s // 3 :] = 1
    seg[0, 2 * s // 3 :] = 2
    return mk(hq), mk(hk), mk(hk), seg


def _fwd_bwd(fn, q, k, v, seg, dout):
    for t in (q, k, v):
        t.grad = None
    o = fn(q, k, v, q.shape[-1] ** -0.5, seg)
    o.backward(dout)
    return o.detach().float(), [t.grad.float() for t in (q, k, v)]


def _err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def test_installed_flavours_are_reported():
    print(f"\nflash flavours installed: {fb.installed()}; usable on this GPU: {_flavours()}")


@pytest.mark.parametrize(
    "flavour", _flavours() or [pytest.param("none", marks=pytest.mark.skip("no flash flavour here"))]
)
@pytest.mark.parametrize("docmask", [False, True])
def test_flavour_matches_sdpa(flavour, docmask):
    q, k, v, seg = _inputs()
    seg = seg if docmask else None
    dout = torch.randn_like(q)
    want, wgrads = _fwd_bwd(A.attention_sdpa, q, k, v, seg, dout)
    got, grads = _fwd_bwd(A.BACKENDS[flavour], q, k, v, seg, dout)
    assert _err(got, want) < 2e-2, flavour
    for name, a, b in zip("qkv", grads, wgrads, strict=True):
        assert _err(a, b) < 5e-2, (flavour, name)


@pytest.mark.parametrize("docmask", [False, True])
def test_timings(docmask):
    import triton.testing

    q, k, v, seg = _inputs(b=4, s=4096, hq=32, hk=8)
    seg = seg if docmask else None
    dout = torch.randn_like(q)
    rows = []
    for name in ["sdpa", *_flavours()]:
        fn = A.BACKENDS[name]
        ms = triton.testing.do_bench(lambda fn=fn: _fwd_bwd(fn, q, k, v, seg, dout), warmup=5, rep=30)
        rows.append(f"{name:6s} fwd+bwd {ms:7.3f} ms")
    print(f"\nattention b=4 s=4096 hq=32 hk=8 d=128 bf16 causal{' + document mask' if docmask else ''}:")
    print("\n".join(rows))
