"""Compile every Triton kernel ahead of time for a CUDA target (no GPU needed: Triton's own
compiler and ptxas), so the compiled path is type-checked on CPU machines too. Run as a script with
TRITON_INTERPRET unset: `python tests/triton_aot.py [sm]`; prints one line per kernel variant."""

import os
import sys
import time

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from megacrystal.ops import triton_cross_entropy as tce  # noqa: E402
from megacrystal.ops import triton_norm as tn  # noqa: E402
from megacrystal.ops import triton_rotary as tr  # noqa: E402
from megacrystal.ops import triton_swiglu as ts  # noqa: E402


def variants(dt):
    p = "*" + dt
    yield (
        "norm_fwd",
        tn._norm_fwd,
        dict(
            X=p, Y=p, W=p, B=p, MEAN="*fp32", RSTD="*fp32", stride_x="i32", stride_y="i32", M="i32", N="i32", eps="fp32"
        ),
        [dict(RMS=False, HAS_BIAS=True, BLOCK=4096, ROWS=1), dict(RMS=True, HAS_BIAS=False, BLOCK=2048, ROWS=2)],
    )
    yield (
        "norm_bwd",
        tn._norm_bwd,
        dict(
            X=p,
            W=p,
            DY=p,
            DX=p,
            MEAN="*fp32",
            RSTD="*fp32",
            DW="*fp32",
            DB="*fp32",
            stride_x="i32",
            stride_dy="i32",
            stride_dx="i32",
            M="i32",
            N="i32",
        ),
        [
            dict(TILE=1, ITERS=32, STAGES=2, RMS=False, HAS_BIAS=True, BLOCK=4096),
            dict(TILE=2, ITERS=4, STAGES=1, RMS=True, HAS_BIAS=False, BLOCK=1024),
        ],
    )
    yield (
        "norm_sum",
        tn._sum_partials,
        dict(PW="*fp32", PB="*fp32", OW=p, OB=p, P="i32", N="i32"),
        [dict(HAS_BIAS=True, CHUNKS=9, BLOCK_P=32, BLOCK_N=64)],
    )
    strides = {
        n: "i64"
        for n in (
            "sq_b",
            "sq_s",
            "sq_g",
            "sq_h",
            "sk_b",
            "sk_s",
            "sk_h",
            "sv_b",
            "sv_s",
            "sv_h",
            "soq_b",
            "soq_s",
            "soq_g",
            "soq_h",
            "sok_b",
            "sok_s",
            "sok_h",
            "sov_b",
            "sov_s",
            "sov_h",
            "sc_b",
            "sc_s",
        )
    }
    yield (
        "rotary",
        tr._rotary,
        dict(
            Q=p,
            K=p,
            V=p,
            OQ=p,
            OK=p,
            OV=p,
            COS="*fp32",
            SIN="*fp32",
            **strides,
            S="i32",
            HQ="i32",
            HK="i32",
            G="i32",
            D="i32",
            ROT="i32",
            ROT_HALF="i32",
            sign="fp32",
        ),
        [
            dict(
                INTERLEAVED=True,
                COPY_REST=True,
                COPY_V=False,
                BLOCK_HQ=32,
                BLOCK_HK=32,
                BLOCK_R=16,
                BLOCK_P=128,
                BLOCK_D=1,
            ),
            dict(
                INTERLEAVED=False,
                COPY_REST=False,
                COPY_V=False,
                BLOCK_HQ=32,
                BLOCK_HK=8,
                BLOCK_R=64,
                BLOCK_P=1,
                BLOCK_D=1,
            ),
            dict(
                INTERLEAVED=True,
                COPY_REST=True,
                COPY_V=True,
                BLOCK_HQ=32,
                BLOCK_HK=8,
                BLOCK_R=16,
                BLOCK_P=128,
                BLOCK_D=128,
            ),
        ],
    )
    yield "swiglu_fwd", ts._swiglu_fwd, dict(UP=p, GATE=p, Y=p, n="i64"), [dict(BLOCK=1024)]
    yield "swiglu_bwd", ts._swiglu_bwd, dict(UP=p, GATE=p, DY=p, DUP=p, DGATE=p, n="i64"), [dict(BLOCK=1024)]
    yield (
        "ce_stats",
        tce._ce_stats,
        dict(
            L=p,
            LABELS="*i64",
            MAX="*fp32",
            SUMEXP="*fp32",
            TGT="*fp32",
            stride_l="i64",
            V="i32",
            vocab_start="i32",
            ignore_index="i32",
        ),
        [dict(N_CHUNKS=8, BLOCK_V=4096, STAGES=2)],
    )
    yield (
        "ce_grad",
        tce._ce_grad,
        dict(
            L=p,
            LABELS="*i64",
            LSE="*fp32",
            DLOSS="*fp32",
            DL=p,
            stride_l="i64",
            stride_dl="i64",
            V="i32",
            vocab_start="i32",
            ignore_index="i32",
        ),
        [dict(N_CHUNKS=8, BLOCK_V=4096, STAGES=1)],
    )


def main(sm: int = 90) -> int:
    target = GPUTarget("cuda", sm, 32)
    for dt in ("bf16", "fp16", "fp32"):
        for name, fn, sig, consts in variants(dt):
            for c in consts:
                t = time.time()
                full = dict(sig, **{k: "constexpr" for k in c})
                k = triton.compile(
                    ASTSource(fn=fn, signature=full, constexprs=c), target=target, options={"num_warps": 8}
                )
                assert k.asm.get("cubin"), name
                print(f"ok sm_{sm} {dt} {name} {c} {time.time() - t:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 90))
