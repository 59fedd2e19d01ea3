"""Attention backends: SDPA against the math reference, document masking, varlen plumbing (cu_seqlens)."""

import math

import pytest
import torch

from megacrystal.model.attention import (
    attention,
    attention_math,
    attention_sdpa,
    attention_varlen,
    cu_seqlens,
    flash_module,
    select_backend,
    varlen_math,
)


def _qkv(b, s, hq, hk, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, s, h, d, generator=g).to(dtype).requires_grad_() for h in (hq, hk, hk)]


def _segments(b, s, seed=0):
    """Packed documents: random boundaries per row, ids increasing along the row."""
    g = torch.Generator().manual_seed(seed)
    return torch.cumsum(torch.rand(b, s, generator=g) < 0.2, dim=1)


@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("docs", [False, True])
@pytest.mark.parametrize("scale", ["1/d", "1/sqrt(d)"])
def test_sdpa_matches_math(heads, docs, scale):
    d = 16
    sc = 1.0 / d if scale == "1/d" else 1.0 / math.sqrt(d)
    q, k, v = _qkv(2, 24, *heads, d)
    seg = _segments(2, 24) if docs else None
    dout = torch.randn(2, 24, heads[0], d)
    a = attention_math(q, k, v, sc, seg)
    ga = torch.autograd.grad(a, (q, k, v), dout)
    b = attention_sdpa(q, k, v, sc, seg)
    gb = torch.autograd.grad(b, (q, k, v), dout)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for x, y in zip(gb, ga, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_document_mask_isolates_documents():
    """With segment ids, each document's output equals attending over that document alone."""
    q, k, v = _qkv(1, 20, 2, 2, 8, seed=3)
    seg = torch.tensor([[0] * 7 + [1] * 9 + [2] * 4])
    out = attention_math(q, k, v, 0.125, seg)
    for a, e in ((0, 7), (7, 16), (16, 20)):
        alone = attention_math(q[:, a:e], k[:, a:e], v[:, a:e], 0.125)
        torch.testing.assert_close(out[:, a:e], alone)


def test_cu_seqlens_from_segment_ids():
    seg = torch.tensor([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 6, 6]])
    cu, longest = cu_seqlens(seg)
    assert cu.dtype == torch.int32
    assert cu.tolist() == [0, 2, 5, 6, 10, 12] and longest == 4


@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])
def test_varlen_plumbing_matches_masked_attention(heads):
    """The flash backend's reshapes and cu_seqlens, driven by a plain-torch varlen kernel."""
    q, k, v = _qkv(3, 16, *heads, 8, seed=1)
    seg = _segments(3, 16, seed=2)

    def dense(q, k, v, softmax_scale, causal):
        return attention_math(q, k, v, softmax_scale)

    out = attention_varlen(q, k, v, 0.125, seg, dense, varlen_math)
    torch.testing.assert_close(out, attention_math(q, k, v, 0.125, seg), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        attention_varlen(q, k, v, 0.125, None, dense, varlen_math), attention_math(q, k, v, 0.125)
    )


def test_backend_selection():
    cpu = torch.device("cpu")
    assert select_backend("auto", cpu, torch.bfloat16) == "sdpa"
    assert select_backend("math", cpu, torch.float32) == "math"
    with pytest.raises(ValueError, match="attention_backend"):
        select_backend("nope", cpu)
    with pytest.raises(RuntimeError, match="flash"):
        select_backend("flash", cpu, torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available() or flash_module() is None, reason="needs CUDA and flash-attn")
@pytest.mark.parametrize("docs", [False, True])
def test_flash_matches_math_on_gpu(docs):
    q, k, v = (t.detach().cuda().requires_grad_() for t in _qkv(2, 256, 8, 2, 64, torch.bfloat16))
    seg = _segments(2, 256).cuda() if docs else None
    dout = torch.randn_like(q)
    a = attention(q, k, v, 1 / 64, seg, "flash")
    ga = torch.autograd.grad(a, (q, k, v), dout)
    b = attention_math(q, k, v, 1 / 64, seg)
    gb = torch.autograd.grad(b, (q, k, v), dout)
    torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x.float(), y.float(), rtol=5e-2, atol=5e-2)


def test_cu_seqlens_is_recomputed_when_the_ids_change():
    seg = torch.tensor([[0, 0, 1, 1]])
    assert cu_seqlens(seg)[0].tolist() == [0, 2, 4]
    seg[0, 1] = 1  # in-place edit bumps the version
    assert cu_seqlens(seg)[0].tolist() == [0, 1, 4]
    assert cu_seqlens(torch.tensor([[3, 3, 3, 3]]))[0].tolist() == [0, 4]


def test_the_batch_boundaries_reach_the_varlen_kernel_without_a_device_read(monkeypatch):
    """Training batches carry cu_seqlens/max_seqlen from the loader (computed on the host): the model
    hands them to the attention kernel, which then never derives them from segment_ids on the device."""
    import megacrystal.model.attention as A
    from megacrystal.data.batch import finish_batch

    from .model_util import tiny_model

    cfg, model = tiny_model(document_mask=True, attention_backend="sdpa")
    seg = _segments(2, 16, seed=3).to(torch.int32)
    batch = finish_batch(dict(segment_ids=seg))
    seen = []
    sdpa = A.BACKENDS["sdpa"]

    def recording(q, k, v, scale, segment_ids=None, bounds=None):
        seen.append(bounds)
        return sdpa(q, k, v, scale, segment_ids, bounds)

    monkeypatch.setitem(A.BACKENDS, "sdpa", recording)
    monkeypatch.setattr(A, "cu_seqlens", lambda s: pytest.fail("boundaries derived on the device"))
    tokens = torch.randint(0, cfg.vocab_size, (2, 16))
    model(tokens=tokens, segment_ids=seg, cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"])
    assert len(seen) == cfg.num_layers
    assert all(b[0] is batch["cu_seqlens"] and b[1] == batch["max_seqlen"] for b in seen)
    # and the varlen driver takes them as given
    q, k, v = _qkv(2, 16, 4, 2, 8, seed=4)

    def dense(q, k, v, softmax_scale, causal):
        return attention_math(q, k, v, softmax_scale)

    got = attention_varlen(q, k, v, 0.125, seg, dense, varlen_math, bounds=(batch["cu_seqlens"], batch["max_seqlen"]))
    torch.testing.assert_close(got, attention_math(q, k, v, 0.125, seg), rtol=1e-6, atol=1e-6)
