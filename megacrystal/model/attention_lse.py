"""Attention over one block of queries and keys that also returns each query row's log-sum-exp, and
the backward of such a block given the *final* output and log-sum-exp of the rows. Ring attention
(parallel/ring_attention.py) is built from these: a query's softmax spans key blocks computed apart,
the partial outputs are merged by their log-sum-exp, and the backward of every block uses the merged
output and log-sum-exp (P = exp(S - lse), dS = P * (dP - rowsum(dO * O))), as flash attention's does.

    out, lse, aux = block_forward(kernel, q, k, v, scale, causal, allowed)
    dq, dk, dv = block_backward(kernel, dout, q, k, v, out, lse, aux, scale, causal, allowed)

q [b, Lq, hq, d], k/v [b, Lk, hk, d] (hq a multiple of hk: grouped-query attention); `out` [b, Lq, hq, d]
and `lse` [b, hq, Lq] in the wide dtype (fp32, fp64 for fp64); a row that sees no key gets out 0 and
lse -inf. `causal`: the block is square and its rows see keys up to their own index; `allowed`: a
boolean [b, Lq, Lk] mask instead (document masks), or neither (every key). Kernels:

    math            explicit scores in the wide dtype, any device (the reference)
    sdpa_cpu        SDPA's CPU flash kernel (aten `_scaled_dot_product_flash_attention_for_cpu` + backward)
    sdpa_flash      CUDA, bf16/fp16, no mask: aten `_scaled_dot_product_flash_attention` + backward
    sdpa_efficient  CUDA, fp32/bf16/fp16, with a mask: aten `_scaled_dot_product_efficient_attention` + backward
(fp32 without a mask and fp64 on CUDA run `math`). On the meta device (`megacrystal rehearse`) the
CUDA choice is made, so a rehearsal allocates and saves what the GPU's kernel does.
The aten kernels take equal head counts: k/v are expanded for them and dk/dv summed back per group.
"""

from __future__ import annotations

import torch

from ..ops.precision import wide_dtype, widen

KERNELS = ("math", "sdpa_cpu", "sdpa_flash", "sdpa_efficient")


def pick_kernel(backend: str, device: torch.device, dtype: torch.dtype, masked: bool) -> str:
    """The block kernel for `model.attention_backend` (auto, sdpa or math) on this device and dtype."""
    if backend == "math":
        return "math"
    if device.type == "cpu":
        return "sdpa_cpu"
    if device.type in ("cuda", "meta"):  # meta: a rehearsal plays the GPU's kernel (aten has its meta shapes)
        half = dtype in (torch.bfloat16, torch.float16)
        if half and not masked:
            return "sdpa_flash"
        if masked and (half or dtype == torch.float32):
            return "sdpa_efficient"
    return "math"


def _expand(t: torch.Tensor, groups: int) -> torch.Tensor:
    return t.repeat_interleave(groups, dim=2) if groups > 1 else t


def _fold(g: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum an expanded [b, L, hq, d] gradient back to [b, L, hq / groups, d]."""
    if groups == 1:
        return g
    b, n, h, d = g.shape
    return g.view(b, n, h // groups, groups, d).sum(3)


def _bhld(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2)


def _bias(allowed: torch.Tensor, dtype: torch.dtype, align: int = 1) -> torch.Tensor:
    """Additive mask [b, 1, Lq, Lk] (0 allowed, -inf not); last dim stored padded to `align`."""
    b, lq, lk = allowed.shape
    width = -(-lk // align) * align
    out = torch.full((b, 1, lq, width), float("-inf"), dtype=dtype, device=allowed.device)
    out[..., :lk].masked_fill_(allowed[:, None], 0.0)
    return out[..., :lk]


def _visible(allowed: torch.Tensor | None) -> torch.Tensor | None:
    """[b, 1, Lq] rows that see at least one key (None: all do)."""
    return None if allowed is None else allowed.any(-1)[:, None]


def _causal(lq: int, lk: int, device) -> torch.Tensor:
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril()


# ----------------------------------------------------------------------------- math


def _math_probs(qf, kf, scale, causal, allowed, lse=None):
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(~_causal(s.shape[-2], s.shape[-1], s.device), float("-inf"))
    elif allowed is not None:
        s = s.masked_fill(~allowed[:, None], float("-inf"))
    if lse is None:
        lse = torch.logsumexp(s, dim=-1)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    return torch.exp(s - safe[..., None]), lse


def _math_forward(q, k, v, scale, causal, allowed):
    g = q.shape[2] // k.shape[2]
    qf, kf, vf = (widen(_bhld(t)) for t in (q, _expand(k, g), _expand(v, g)))
    p, lse = _math_probs(qf, kf, scale, causal, allowed)
    return _bhld(torch.matmul(p, vf)), lse, None


def _math_backward(dout, q, k, v, out, lse, scale, causal, allowed):
    g = q.shape[2] // k.shape[2]
    qf, kf, vf = (widen(_bhld(t)) for t in (q, _expand(k, g), _expand(v, g)))
    do, o = widen(_bhld(dout)), _bhld(out)
    p, _ = _math_probs(qf, kf, scale, causal, allowed, lse)
    dv = torch.matmul(p.transpose(-1, -2), do)
    ds = p * (torch.matmul(do, vf.transpose(-1, -2)) - (do * o).sum(-1, keepdim=True))
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qf) * scale
    return _bhld(dq), _fold(_bhld(dk), g), _fold(_bhld(dv), g)


# ----------------------------------------------------------------------------- aten kernels


def _aten_forward(kernel, q, k, v, scale, causal, allowed):
    g = q.shape[2] // k.shape[2]
    qt, kt, vt = _bhld(q), _bhld(_expand(k, g)), _bhld(_expand(v, g))
    aux = None
    if kernel == "sdpa_cpu":
        bias = None if allowed is None else _bias(allowed, q.dtype)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qt, kt, vt, 0.0, causal, attn_mask=bias, scale=scale
        )
    elif kernel == "sdpa_flash":
        out, lse, cq, ck, mq, mk, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
            qt, kt, vt, 0.0, causal, False, scale=scale
        )
        aux = (cq, ck, mq, mk, seed, offset)
    else:  # sdpa_efficient
        bias = _bias(allowed, q.dtype, 16).expand(-1, qt.shape[1], -1, -1) if allowed is not None else None
        out, lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(
            qt, kt, vt, bias, True, 0.0, causal, scale=scale
        )
        aux = (seed, offset, lse.shape[-1])  # the bias is rebuilt in the backward, never kept
        lse = lse[..., : q.shape[1]]
    out, lse = widen(_bhld(out)), lse.to(wide_dtype(q.dtype))
    seen = _visible(allowed)
    if seen is not None:  # the kernels leave a row without keys at lse 0 (or nan): make it -inf, out 0
        lse = torch.where(seen, lse, torch.full_like(lse, float("-inf")))
        out = torch.where(seen.transpose(1, 2)[..., None], out, torch.zeros_like(out))
    return out, lse, aux


def _aten_backward(kernel, dout, q, k, v, out, lse, aux, scale, causal, allowed):
    g = q.shape[2] // k.shape[2]
    qt, kt, vt = _bhld(q), _bhld(_expand(k, g)), _bhld(_expand(v, g))
    dt, ot = _bhld(dout.to(q.dtype)), _bhld(out.to(q.dtype))
    lse_dtype = torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)).to(lse_dtype)  # a row without keys: P = 0
    if kernel == "sdpa_cpu":
        bias = None if allowed is None else _bias(allowed, q.dtype)
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dt, qt, kt, vt, ot, lse, 0.0, causal, attn_mask=bias, scale=scale
        )
    elif kernel == "sdpa_flash":
        cq, ck, mq, mk, seed, offset = aux
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
            dt, qt, kt, vt, ot, lse, cq, ck, mq, mk, 0.0, causal, seed, offset, scale=scale
        )
    else:
        seed, offset, width = aux
        bias = _bias(allowed, q.dtype, 16).expand(-1, qt.shape[1], -1, -1) if allowed is not None else None
        padded = lse.new_zeros(lse.shape[:-1] + (width,))
        padded[..., : lse.shape[-1]] = lse
        dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            dt, qt, kt, vt, bias, ot, padded, seed, offset, 0.0, [True, True, True, False], causal, scale=scale
        )
    return _bhld(dq), _fold(_bhld(dk), g), _fold(_bhld(dv), g)


# ----------------------------------------------------------------------------- entry points


def block_forward(kernel: str, q, k, v, scale: float, causal: bool = False, allowed: torch.Tensor | None = None):
    """(out, lse, aux) of one block; `aux` goes back to `block_backward` (kernel state, no activations)."""
    if kernel == "math":
        return _math_forward(q, k, v, scale, causal, allowed)
    if kernel not in KERNELS:
        raise ValueError(f"attention block kernel: {kernel!r}, expected one of {KERNELS}")
    return _aten_forward(kernel, q, k, v, scale, causal, allowed)


def block_backward(
    kernel: str, dout, q, k, v, out, lse, aux, scale: float, causal: bool = False, allowed: torch.Tensor | None = None
):
    """(dq, dk, dv) of one block in the wide dtype, from the rows' final `out` and `lse` [b, hq, Lq]."""
    if kernel == "math":
        return _math_backward(dout, q, k, v, out, lse, scale, causal, allowed)
    dq, dk, dv = _aten_backward(kernel, dout, q, k, v, out, lse, aux, scale, causal, allowed)
    return widen(dq), widen(dk), widen(dv)
