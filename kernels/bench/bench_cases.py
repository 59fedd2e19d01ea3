"""What the kernel benchmarks measure: per op, the shapes, the bytes an ideal kernel moves (for GB/s),
the FLOPs (attention), and the providers (ours, torch eager, torch.compile, Liger-Kernel, apex, flash-attn).

GPU shapes are the realistic ones (tokens 8k-32k x hidden 2048/4096, Crystal-7B rotary and FFN, vocab 32032,
attention seq 2048); CPU shapes are small (a smoke test of the runner and the reference paths).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from megacrystal.model.attention import attention_math, attention_sdpa, flash_module
from megacrystal.ops.cross_entropy import cross_entropy_reference
from megacrystal.ops.norm import norm_reference
from megacrystal.ops.rotary import qkv_rotary_reference, rope_angles, rotary_reference
from megacrystal.ops.swiglu import swiglu_reference


@dataclass
class Case:
    op: str
    name: str
    dtype: torch.dtype
    make: Callable[[bool], list]  # requires_grad -> args
    bytes: dict = field(default_factory=dict)  # mode -> bytes moved by an ideal kernel
    flops: dict = field(default_factory=dict)  # mode -> FLOPs (attention)
    providers: dict = field(default_factory=dict)  # name -> fn(*args)


def _try_import(path: str, attr: str) -> Callable | None:
    try:
        mod = __import__(path, fromlist=[attr])
        return getattr(mod, attr)
    except Exception:
        return None


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def _triton(spec: str) -> Callable | None:
    if not torch.cuda.is_available():
        return None  # the interpreter is far too slow to benchmark
    return _try_import(*spec.split(":"))


def _add(providers: dict, name: str, fn: Callable | None) -> None:
    if fn is not None:
        providers[name] = fn


def _common(providers: dict, triton_spec: str, reference: Callable, compile_: bool) -> None:
    _add(providers, "megacrystal-triton", _triton(triton_spec))
    providers["megacrystal-reference"] = reference
    if compile_:
        providers["torch.compile(reference)"] = _compiled(reference)


def norm_cases(gpu: bool, dev: str, compile_: bool) -> list[Case]:
    shapes = [(16384, 4096), (16384, 2048), (32768, 4096)] if gpu else [(256, 256)]
    dtype = torch.bfloat16 if gpu else torch.float32
    out = []
    for rms in (False, True):
        for t, h in shapes:

            def make(rg, t=t, h=h, rms=rms):
                x = torch.randn(t, h, device=dev, dtype=dtype, requires_grad=rg)
                w = (1 + 0.1 * torch.randn(h, device=dev)).to(dtype).requires_grad_(rg)
                b = None if rms else (0.1 * torch.randn(h, device=dev)).to(dtype).requires_grad_(rg)
                return [x, w, b]

            e = torch.tensor([], dtype=dtype).element_size()
            c = Case(
                "rmsnorm" if rms else "layernorm",
                f"{t}x{h}",
                dtype,
                make,
                bytes={"fwd": 2 * t * h * e, "fwd+bwd": 5 * t * h * e},
            )

            def ours_ref(x, w, b, rms=rms):
                return norm_reference(x, w, b, 1e-5, rms)

            _common(
                c.providers, "megacrystal.ops.triton_norm:norm_triton", ours_ref, compile_ and h == 4096 and t == 16384
            )
            tri = c.providers.get("megacrystal-triton")
            if tri is not None:
                c.providers["megacrystal-triton"] = lambda x, w, b, tri=tri, rms=rms: tri(x, w, b, 1e-5, rms)
            if rms:
                c.providers["torch-eager F.rms_norm"] = lambda x, w, b, h=h: F.rms_norm(x, (h,), w, 1e-5)
            else:
                c.providers["torch-eager F.layer_norm"] = lambda x, w, b, h=h: F.layer_norm(x, (h,), w, b, 1e-5)
            if gpu:
                if rms:
                    lig = _try_import("liger_kernel.ops.rms_norm", "LigerRMSNormFunction")
                    _add(c.providers, "liger", lig and (lambda x, w, b, lig=lig: lig.apply(x, w, 1e-5)))
                    apx = _try_import("apex.normalization.fused_layer_norm", "fused_rms_norm_affine")
                    _add(c.providers, "apex", apx and (lambda x, w, b, apx=apx, h=h: apx(x, w, (h,), 1e-5)))
                else:
                    lig = _try_import("liger_kernel.ops.layer_norm", "LigerLayerNormFunction")
                    _add(c.providers, "liger", lig and (lambda x, w, b, lig=lig: lig.apply(x, w, b, 1e-5)))
                    apx = _try_import("apex.normalization.fused_layer_norm", "fused_layer_norm_affine")
                    _add(c.providers, "apex", apx and (lambda x, w, b, apx=apx, h=h: apx(x, w, b, (h,), 1e-5)))
            out.append(c)
    return out


def rotary_cases(gpu: bool, dev: str, compile_: bool) -> list[Case]:
    b, s, h, d = (4, 2048, 32, 128) if gpu else (1, 64, 4, 64)
    dtype = torch.bfloat16 if gpu else torch.float32
    out = []
    for label, frac, inter in (("crystal rot=d/4 interleaved", 0.25, True), ("llama rot=d half", 1.0, False)):
        rot = int(d * frac)

        def make(rg, rot=rot):
            q = torch.randn(b, s, h, d, device=dev, dtype=dtype, requires_grad=rg)
            k = torch.randn(b, s, h, d, device=dev, dtype=dtype, requires_grad=rg)
            cos, sin = rope_angles(torch.arange(s, device=dev), rot, 10000.0)
            return [q, k, cos, sin]

        e = torch.tensor([], dtype=dtype).element_size()
        n = 2 * b * s * h * d
        c = Case("rotary", f"b{b} s{s} h{h} d{d} {label}", dtype, make, bytes={"fwd": 2 * n * e, "fwd+bwd": 4 * n * e})

        def ref(q, k, cos, sin, inter=inter):
            return rotary_reference(q, k, cos, sin, inter)

        _common(c.providers, "megacrystal.ops.triton_rotary:rotary_triton", ref, compile_)
        tri = c.providers.get("megacrystal-triton")
        if tri is not None:
            c.providers["megacrystal-triton"] = lambda q, k, cos, sin, tri=tri, inter=inter: tri(q, k, cos, sin, inter)
        if gpu and not inter:
            # Liger's rope: rotate-half only, [b, h, s, d] views, cos/sin over the whole rotated width; in place
            lig = _try_import("liger_kernel.ops.rope", "LigerRopeFunction")
            _add(
                c.providers,
                "liger (in place)",
                lig
                and (
                    lambda q, k, cos, sin, lig=lig, rot=rot: lig.apply(
                        q.transpose(1, 2),
                        k.transpose(1, 2),
                        torch.cat((cos, cos), -1)[None],
                        torch.cat((sin, sin), -1)[None],
                        None,
                        1,
                        rot,
                    )
                ),
            )
        out.append(c)
    out.append(_qkv_rotary_case(gpu, dev, compile_))
    return out


def _qkv_rotary_case(gpu: bool, dev: str, compile_: bool) -> Case:
    """The model's use: split the fused QKV output [b,s,hk,g+2,d] into contiguous q, k, v with q, k rotated
    (Crystal: rot = d/4 interleaved). Ideal bytes: read qkv once, write q, k, v (fwd); the same again for the
    packed d(qkv) (bwd)."""
    b, s, hk, g, d = (4, 2048, 32, 1, 128) if gpu else (1, 64, 4, 1, 64)
    dtype = torch.bfloat16 if gpu else torch.float32
    rot = d // 4

    def make(rg):
        qkv = torch.randn(b, s, hk, g + 2, d, device=dev, dtype=dtype, requires_grad=rg)
        cos, sin = rope_angles(torch.arange(s, device=dev), rot, 10000.0)
        return [qkv, cos, sin]

    e = torch.tensor([], dtype=dtype).element_size()
    n = b * s * hk * (g + 2) * d
    c = Case(
        "qkv_rotary",
        f"b{b} s{s} hk{hk} g{g} d{d} crystal rot=d/4",
        dtype,
        make,
        bytes={"fwd": 2 * n * e, "fwd+bwd": 4 * n * e},
    )

    def ref(qkv, cos, sin):
        return qkv_rotary_reference(qkv, cos, sin, True)

    _common(c.providers, "megacrystal.ops.triton_rotary:qkv_rotary_triton", ref, compile_)
    tri = c.providers.get("megacrystal-triton")
    if tri is not None:
        c.providers["megacrystal-triton"] = lambda qkv, cos, sin, tri=tri: tri(qkv, cos, sin, True)
        rot_tri = _triton("megacrystal.ops.triton_rotary:rotary_triton")

        def unfused(qkv, cos, sin):  # what the model did before: views, rotary of q and k, v.contiguous()
            q, k = rot_tri(qkv[:, :, :, :g].reshape(b, s, hk * g, d), qkv[:, :, :, g], cos, sin, True)
            return q, k, qkv[:, :, :, g + 1].contiguous()

        c.providers["triton rotary + views (unfused)"] = unfused
    return c


def swiglu_cases(gpu: bool, dev: str, compile_: bool) -> list[Case]:
    t, f = (16384, 10922) if gpu else (256, 512)
    dtype = torch.bfloat16 if gpu else torch.float32

    def make(rg):
        return [
            torch.randn(t, f, device=dev, dtype=dtype, requires_grad=rg),
            torch.randn(t, f, device=dev, dtype=dtype, requires_grad=rg),
        ]

    e = torch.tensor([], dtype=dtype).element_size()
    c = Case("swiglu", f"{t}x{f}", dtype, make, bytes={"fwd": 3 * t * f * e, "fwd+bwd": 8 * t * f * e})
    _common(c.providers, "megacrystal.ops.triton_swiglu:swiglu_triton", swiglu_reference, compile_)
    c.providers["torch-eager up*silu(gate)"] = lambda up, gate: up * F.silu(gate)
    if gpu:
        lig = _try_import("liger_kernel.ops.swiglu", "LigerSiLUMulFunction")
        _add(c.providers, "liger", lig and (lambda up, gate, lig=lig: lig.apply(gate, up)))
    return [c]


def cross_entropy_cases(gpu: bool, dev: str, compile_: bool) -> list[Case]:
    t, v = (8192, 32032) if gpu else (64, 1000)
    dtype = torch.bfloat16 if gpu else torch.float32

    def make(rg):
        logits = torch.randn(t, v, device=dev, dtype=dtype, requires_grad=rg)
        return [logits, torch.randint(0, v, (t,), device=dev)]

    e = torch.tensor([], dtype=dtype).element_size()
    c = Case("cross_entropy", f"{t}x{v}", dtype, make, bytes={"fwd": t * v * e, "fwd+bwd": 3 * t * v * e})
    _common(c.providers, "megacrystal.ops.triton_cross_entropy:cross_entropy_triton", cross_entropy_reference, compile_)
    if gpu:
        lig = _try_import("liger_kernel.transformers.functional", "liger_cross_entropy")
        _add(
            c.providers,
            "liger (mean; grad computed in fwd)",
            lig and (lambda x, y, lig=lig: lig(x, y, reduction="mean")),
        )
    return [c]


def attention_cases(gpu: bool, dev: str, compile_: bool) -> list[Case]:
    b, s, h, d = (4, 2048, 32, 128) if gpu else (1, 128, 2, 32)
    dtype = torch.bfloat16 if gpu else torch.float32
    fwd = 4 * b * s * s * h * d / 2  # causal: half of the two s x s x d matmuls
    out = []
    for docs in (False, True):

        def make(rg, docs=docs):
            q, k, v = (torch.randn(b, s, h, d, device=dev, dtype=dtype, requires_grad=rg) for _ in range(3))
            seg = (torch.arange(s, device=dev) // (s // 4)).expand(b, s).contiguous() if docs else None
            return [q, k, v, seg]

        c = Case(
            "attention",
            f"b{b} s{s} h{h} d{d} causal{' 4 docs/row' if docs else ''}",
            dtype,
            make,
            flops={"fwd": fwd / (4 if docs else 1), "fwd+bwd": 3.5 * fwd / (4 if docs else 1)},
        )
        scale = 1.0 / d
        if gpu and flash_module() is not None:
            from megacrystal.model.attention import attention_flash

            c.providers[f"flash ({flash_module()[0]})"] = lambda q, k, v, seg: attention_flash(q, k, v, scale, seg)
        c.providers["sdpa"] = lambda q, k, v, seg: attention_sdpa(q, k, v, scale, seg)
        if gpu and not docs:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            for name, backend in (
                ("sdpa[cudnn]", SDPBackend.CUDNN_ATTENTION),
                ("sdpa[flash]", SDPBackend.FLASH_ATTENTION),
            ):

                def run(q, k, v, seg, backend=backend):
                    with sdpa_kernel(backend):
                        return attention_sdpa(q, k, v, scale, seg)

                c.providers[name] = run
        c.providers["math (reference)"] = lambda q, k, v, seg: attention_math(q, k, v, scale, seg)
        out.append(c)
    return out


ALL = {
    "norm": norm_cases,
    "rotary": rotary_cases,
    "swiglu": swiglu_cases,
    "cross_entropy": cross_entropy_cases,
    "attention": attention_cases,
}
