"""Attention backend dispatch and its refusals on the CPU: the flash flavours' order per GPU
generation, the refusal lines, and the calling convention of the FA4 adapter (its 4th positional
parameter is `qv`, so everything else goes by keyword), checked against a module with FA4's
signature whose kernels are the plain-torch varlen reference. The real FA4/FA3/FA2 kernels are
compared with SDPA on a GPU (tests/test_attention_backends_gpu.py)."""

import sys

import pytest
import torch

from megacrystal.model import attention as A
from megacrystal.model import flash_backends as fb

FA4_SIGNATURE_MODULE = '''
"""FA4's public signatures (flash_attn.cute) with the torch varlen reference as the kernel."""
from megacrystal.model.attention import attention_math, varlen_math


def flash_attn_func(q, k, v, qv=None, gather_kv_indices=None, softmax_scale=None, causal=False, **kw):
    assert qv is None and gather_kv_indices is None and causal
    return attention_math(q, k, v, softmax_scale)


def flash_attn_varlen_func(q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                           max_seqlen_k=None, min_seqlen_k=None, seqused_q=None, seqused_k=None,
                           gather_kv_indices=None, page_table=None, softmax_scale=None, causal=False, **kw):
    assert qv is None and causal and cu_seqlens_q is not None
    return varlen_math(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale), None
'''


@pytest.fixture
def fa4_only(tmp_path, monkeypatch):
    """A site with `flash_attn/cute` and no flash_attn/__init__.py, as the flash-attn-4 wheel installs."""
    pkg = tmp_path / "flash_attn" / "cute"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FA4_SIGNATURE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in [m for m in sys.modules if m.startswith("flash_attn")]:
        monkeypatch.delitem(sys.modules, m)
    fb.module.cache_clear()
    yield
    fb.module.cache_clear()
    for m in [m for m in sys.modules if m.startswith("flash_attn")]:
        del sys.modules[m]


def test_order_per_gpu_generation():
    assert fb.order((9, 0)) == ["fa3", "fa4", "fa2"]
    assert fb.order((10, 0)) == ["fa4", "fa2"]
    assert fb.order((8, 0)) == ["fa2"]
    assert not fb.supported_capability("fa3", (10, 0)) and not fb.supported_capability("fa4", (8, 0))
    assert fb.supported_capability("fa4", (12, 0)) and fb.supported_capability("fa2", (8, 6))


def test_refusals_name_the_reason():
    cpu = torch.device("cpu")
    assert A.select_backend("auto", cpu, torch.bfloat16) == "sdpa"
    for b in ("flash", "fa2", "fa3", "fa4"):
        with pytest.raises(RuntimeError, match=f"attention_backend={b}: needs bf16/fp16 tensors on CUDA"):
            A.select_backend(b, cpu, torch.bfloat16)
    assert fb.pick(cpu) == (None, "flash kernels need CUDA, the device is cpu")
    with pytest.raises(ValueError, match="'fa5' is not a backend"):
        A.select_backend("fa5", cpu)


def test_fa4_wheel_alone_is_fa4_not_fa2_and_its_adapter_matches_the_reference(fa4_only):
    assert fb.module("fa2") is None  # `import flash_attn` works (namespace), but it is not FA2
    assert fb.module("fa4") is not None and fb.installed() == ["fa4"]
    g = torch.Generator().manual_seed(0)
    b, s, hq, hk, d = 2, 12, 4, 2, 8
    q, k, v = (torch.randn(b, s, h, d, generator=g) for h in (hq, hk, hk))
    seg = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    want = A.attention_math(q, k, v, 0.3, seg)
    got = fb.call("fa4", q, k, v, 0.3, seg, A.attention_varlen)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(fb.call("fa4", q, k, v, 0.3, None, A.attention_varlen), A.attention_math(q, k, v, 0.3))
