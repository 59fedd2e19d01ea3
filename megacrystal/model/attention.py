"""Causal self-attention with a configurable score scale (1/d under muP, else 1/sqrt(d)),
optional per-document masking (`segment_ids` [b, s]: attention stays within runs of equal ids), fp32 softmax.

Backends (`model.attention_backend`):
  flash  the best installed flash-attention flavour for the GPU (model/flash_backends.py: FA3 on Hopper,
         FA4 `flash-attn-4` on Hopper/Blackwell, FA2), CUDA, bf16/fp16; document masking through the
         varlen kernel with cu_seqlens built from `segment_ids`; GQA native.
  fa2 / fa3 / fa4  that flavour only (refused with the reason and the install command when it cannot run)
  sdpa   torch scaled_dot_product_attention (torch picks flash / cuDNN / memory-efficient / math);
         document masking as a boolean mask.
  math   the reference: explicit fp32 scores and softmax.
  auto   flash when a flavour supports the GPU and the tensors are bf16/fp16 on CUDA, else sdpa. Logged once.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..log import say_once
from ..ops.precision import widen
from . import flash_backends as fb


def _expand_kv(k: torch.Tensor, v: torch.Tensor, hq: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = hq // k.shape[2]
    if g > 1:
        k = k.repeat_interleave(g, dim=2)
        v = v.repeat_interleave(g, dim=2)
    return k, v


def _mask(s: int, segment_ids: torch.Tensor | None, device) -> torch.Tensor:
    """Boolean [b or 1, 1, s, s]: True where attention is allowed."""
    causal = torch.ones(s, s, dtype=torch.bool, device=device).tril()
    if segment_ids is None:
        return causal[None, None]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (causal[None] & same)[:, None]


def attention_math(q, k, v, scale: float, segment_ids: torch.Tensor | None = None, bounds=None) -> torch.Tensor:
    """q [b, s, hq, d], k/v [b, s, hk, d] -> [b, s, hq, d]; fp32 scores and softmax."""
    k, v = _expand_kv(k, v, q.shape[2])
    qf, kf, vf = (widen(t.transpose(1, 2)) for t in (q, k, v))
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~_mask(q.shape[1], segment_ids, q.device), float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return torch.matmul(p, vf).transpose(1, 2).to(q.dtype)


def attention_masked(q, k, v, scale: float, mask: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """q [b, sq, hq, d] over k/v [b, sk, hk, d] where the boolean `mask` [b, 1, sq, sk] is True (the
    KV-cache decoding step: queries at per-row offsets). `math` for the math backend, else sdpa."""
    if backend == "math":
        kf, vf = _expand_kv(k, v, q.shape[2])
        qf, kf, vf = (widen(t.transpose(1, 2)) for t in (q, kf, vf))
        scores = (torch.matmul(qf, kf.transpose(-1, -2)) * scale).masked_fill(~mask, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), vf).transpose(1, 2).to(q.dtype)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    gqa = k.shape[2] != q.shape[2]
    return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=gqa).transpose(1, 2)


def attention_sdpa(q, k, v, scale: float, segment_ids: torch.Tensor | None = None, bounds=None) -> torch.Tensor:
    gqa = k.shape[2] != q.shape[2]
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if segment_ids is None:
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        o = F.scaled_dot_product_attention(
            qt, kt, vt, attn_mask=_mask(q.shape[1], segment_ids, q.device), scale=scale, enable_gqa=gqa
        )
    return o.transpose(1, 2)


# ----------------------------------------------------------------------------- varlen / flash-attn

_cu_cache: dict = {}


def cu_seqlens(segment_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Document boundaries of a packed batch for varlen kernels: int32 offsets into the flattened
    [b*s] tokens where a run of equal segment ids (or a row) starts, plus the total, and the longest run.
    For callers without them: training batches carry `cu_seqlens`/`max_seqlen` from the loader
    (data/batch.py, computed on the host), since this costs a device sync (`nonzero`, the longest run).
    Remembered for the last `segment_ids` tensor (every layer asks for the same one)."""
    hit = _cu_cache.get("key")
    if hit is not None and hit[0]() is segment_ids and hit[1] == segment_ids._version:
        return _cu_cache["value"]
    value = _cu_seqlens(segment_ids)
    _cu_cache["key"] = (weakref.ref(segment_ids), segment_ids._version)
    _cu_cache["value"] = value
    return value


def _cu_seqlens(segment_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    b, s = segment_ids.shape
    starts = torch.ones(b, s, dtype=torch.bool, device=segment_ids.device)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    idx = starts.reshape(-1).nonzero().squeeze(1)
    cu = torch.cat([idx, idx.new_tensor([b * s])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max().item())


def varlen_math(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=None, causal=True):
    """The varlen contract of flash-attn in plain torch (q [total, hq, d], k/v [total, hk, d]); the
    reference the cu_seqlens plumbing is tested against on CPU."""
    out = torch.empty_like(q)
    for a, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        out[a:e] = attention_math(q[None, a:e], k[None, a:e], v[None, a:e], softmax_scale)[0]
    return out


def flash_module():
    """(module name, module) of the first installed flash flavour (fa3, fa4, fa2), else None."""
    for n in fb.MODULES:
        if fb.module(n) is not None:
            return fb.MODULES[n], fb.module(n)
    return None


def _first(out):
    return out[0] if isinstance(out, tuple) else out  # some flash-attn 3 versions return (out, lse)


def attention_varlen(
    q, k, v, scale: float, segment_ids: torch.Tensor | None, dense: Callable, varlen: Callable, bounds=None
) -> torch.Tensor:
    """Causal attention through flash-attn style kernels: `dense(q, k, v, softmax_scale=, causal=)` on
    [b, s, h, d], or with document masking `varlen(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=,
    causal=)` on the flattened tokens. `bounds`: (cu_seqlens on the device, longest document) as the
    batch carries them; computed from `segment_ids` when not given."""
    if segment_ids is None:
        return _first(dense(q, k, v, softmax_scale=scale, causal=True))
    b, s, hq, d = q.shape
    cu, longest = bounds if bounds is not None else cu_seqlens(segment_ids)
    flat = [t.reshape(b * s, t.shape[2], d) for t in (q, k, v)]
    o = _first(varlen(*flat, cu, cu, longest, longest, softmax_scale=scale, causal=True))
    return o.reshape(b, s, hq, d)


def _flash(flavour: str | None):
    def run(q, k, v, scale: float, segment_ids: torch.Tensor | None = None, bounds=None) -> torch.Tensor:
        name, why = fb.pick(q.device, flavour)
        if name is None:
            raise RuntimeError(f"model.attention_backend={flavour or 'flash'}: {why}")
        driver = attention_varlen if bounds is None else functools.partial(attention_varlen, bounds=bounds)
        return fb.call(name, q, k, v, scale, segment_ids, driver)

    return run


def attention_meta(q, k, v, scale: float, segment_ids=None, bounds=None) -> torch.Tensor:
    """Shapes only (a rehearsal on the meta device): flash-attention's outputs and saved tensors."""
    from .attention_meta import attention_meta as run

    return run(q, k, v, scale, segment_ids)


attention_flash = _flash(None)  # the best installed flavour for the device (fb.order)
BACKENDS: dict[str, Callable] = {
    "math": attention_math,
    "sdpa": attention_sdpa,
    "flash": attention_flash,
    "fa2": _flash("fa2"),
    "fa3": _flash("fa3"),
    "fa4": _flash("fa4"),
    "meta": attention_meta,
}
FLASH = ("flash", "fa2", "fa3", "fa4")


def select_backend(requested: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The backend that runs: `auto` is the best flash flavour on bf16/fp16 CUDA tensors, else sdpa; a
    named flash backend that cannot run here is refused with one line saying why and what installs it."""
    half = dtype in (torch.bfloat16, torch.float16)
    if device.type == "meta":  # a rehearsal: whatever runs on the GPU, its shapes are flash-attention's
        return "meta"
    if requested == "auto":
        if device.type == "cuda" and half and fb.pick(device)[0] is not None:
            return "flash"
        return "sdpa"
    if requested not in BACKENDS:
        raise ValueError(
            f"model.attention_backend: {requested!r} is not a backend (expected auto or one of {sorted(BACKENDS)})"
        )
    if requested in FLASH:
        flavour = None if requested == "flash" else requested
        if device.type != "cuda" or (dtype is not None and not half):
            raise RuntimeError(
                f"model.attention_backend={requested}: needs bf16/fp16 tensors on CUDA, got {dtype} on {device.type}"
            )
        name, why = fb.pick(device, flavour)
        if name is None:
            raise RuntimeError(f"model.attention_backend={requested}: {why}")
    return requested


def attention(q, k, v, scale: float, segment_ids=None, backend: str = "auto", bounds=None) -> torch.Tensor:
    """`bounds`: (cu_seqlens, max_seqlen) of the documents in `segment_ids`, as the batch carries them
    (the flash backends' varlen kernels take them; the others mask by `segment_ids`)."""
    name = select_backend(backend, q.device, q.dtype)
    name_full = f"{name} ({fb.pick(q.device, None if name == 'flash' else name)[1]})" if name in FLASH else name
    say_once(f"attention-{name}-{q.device.type}", f"attention backend: {name_full} on {q.device.type}")
    return BACKENDS[name](q, k, v, scale, segment_ids, bounds)
