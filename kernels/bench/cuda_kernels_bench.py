"""Benchmark of the CUDA kernels (kernels/cuda/) on a GPU; JSON + a table.

1. The optimizer step over N parameters (one flat fp32 buffer, bf16 model copy) in GB/s of the bytes
   it must move, 30 B/param: read grad, master, exp_avg, exp_avg_sq (16 B), write master, exp_avg,
   exp_avg_sq (12 B) and the bf16 parameter (2 B); against the device-to-device copy bandwidth:
     cuda         the fused kernel (one launch)
     torch-fused  torch.optim.AdamW(fused=True) on the fp32 master + a bf16 copy_
     torch-foreach  the project's torch path (optim/adamw.py adamw_) + a bf16 copy_
     apex         apex FusedAdam (+ copy) when NVIDIA apex is installed
2. The weight gradient of one micro-batch per linear layer shape (crystal-1b / 7B layers, 8192 tokens):
     unfused      dy^T x in bf16, then main_grad += that (what runs with grad_accum_fusion=off)
     cuda         the cuBLASLt GEMM into main_grad (beta = 1)
     torch        torch.addmm(main_grad, dy^T, x, out_dtype=float32, out=main_grad)

    python kernels/bench/cuda_kernels_bench.py [--params 268435456] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # not `kernels.bench`: a pip package is named kernels
from bench_common import bench_ms, copy_bandwidth_gbps, machine, table

from megacrystal.compiled import cuda_kernels
from megacrystal.compiled.cuda_kernels import adamw_scalars
from megacrystal.model.wgrad_fusion import accumulate_wgrad
from megacrystal.optim.adamw import adamw_
from megacrystal.optim.fused_adamw import chunk_table

BYTES_PER_PARAM = 30
WGRAD_SHAPES = {  # (out, in) of the linear layers, per layer kind
    "crystal-1b qkv": (6144, 2048),
    "crystal-1b up/gate": (5504, 2048),
    "crystal-1b down": (2048, 5504),
    "7B qkv": (12288, 4096),
    "7B up/gate": (11008, 4096),
    "7B down": (4096, 11008),
}


def optimizer_rows(n: int, copy_gbps: float, lib) -> list[dict]:
    dev = "cuda"
    g, p = torch.randn(n, device=dev) * 1e-2, torch.randn(n, device=dev)
    m, v = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
    model = torch.empty(n, dtype=torch.bfloat16, device=dev)
    rows = []

    def row(provider, fn, note=""):
        try:
            ms = bench_ms(fn)
        except Exception as e:  # a provider that fails is reported, not fatal
            rows.append(dict(op="adamw step", case=f"{n / 1e6:.0f}M params", provider=provider, error=str(e)[:80]))
            return
        gbps = BYTES_PER_PARAM * n / (ms * 1e-3) / 1e9
        rows.append(
            dict(
                op="adamw step",
                case=f"{n / 1e6:.0f}M params",
                dtype="fp32+bf16",
                provider=provider,
                ms=ms,
                GBps=gbps,
                pct_copy=100 * gbps / copy_gbps,
                note=note,
            )
        )

    if lib is not None:
        chunks = torch.tensor(chunk_table([(0, n, 0)]), device=dev)
        flag = torch.zeros(1, dtype=torch.int32, device=dev)
        sc = [adamw_scalars(3e-4, 0.1, 10, 0.9, 0.95, 1e-9)]
        row("cuda", lambda: lib.adamw_flat(p, g, m, v, model, chunks, sc, 0.9, 0.95, 0.7, flag))
    param = torch.nn.Parameter(p.clone())
    param.grad = g
    opt = torch.optim.AdamW([param], lr=3e-4, betas=(0.9, 0.95), eps=1e-9, weight_decay=0.1, fused=True)

    def torch_fused():
        opt.step()
        model.copy_(param.detach())

    row("torch-fused", torch_fused)

    def foreach():
        adamw_([p], [g], [m], [v], step=10, lr=3e-4, beta1=0.9, beta2=0.95, eps=1e-9, weight_decay=0.1)
        model.copy_(p)

    row("torch-foreach", foreach)
    try:
        from megacrystal.compiled.apex import apex_fused_adam

        fa = apex_fused_adam()
    except Exception as e:
        fa, why = None, str(e)
    else:
        why = "" if fa is not None else "NVIDIA apex not installed"
    if fa is not None:
        ap = torch.nn.Parameter(p.clone())
        ap.grad = g
        aopt = fa([ap], lr=3e-4, betas=(0.9, 0.95), eps=1e-9, weight_decay=0.1, adam_w_mode=True)

        def apex_step():
            aopt.step()
            model.copy_(ap.detach())

        row("apex", apex_step)
    else:
        rows.append(dict(op="adamw step", case=f"{n / 1e6:.0f}M params", provider="apex", skipped=why))
    return rows


def wgrad_rows(tokens: int, lib) -> list[dict]:
    rows = []
    for case, (out, inp) in WGRAD_SHAPES.items():
        dy = torch.randn(tokens, out, device="cuda").to(torch.bfloat16)
        x = torch.randn(tokens, inp, device="cuda").to(torch.bfloat16)
        main = torch.zeros(out, inp, device="cuda")
        flops = 2 * tokens * out * inp
        impls = {"unfused": lambda: main.add_(dy.t() @ x), "torch": lambda: accumulate_wgrad(main, dy, x, "torch")}
        if lib is not None:
            impls["cuda"] = lambda: accumulate_wgrad(main, dy, x, "cuda")
        for name, fn in impls.items():
            try:
                ms = bench_ms(fn)
                rows.append(
                    dict(
                        op="wgrad",
                        case=f"{case} T={tokens}",
                        dtype="bf16->fp32",
                        provider=name,
                        ms=ms,
                        TFLOPs=flops / (ms * 1e-3) / 1e12,
                    )
                )
            except Exception as e:
                rows.append(dict(op="wgrad", case=case, provider=name, error=str(e)[:80]))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=int, default=1 << 28)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_kernels_bench: needs a CUDA GPU", file=sys.stderr)
        return 2
    lib = cuda_kernels.library()
    copy_gbps = copy_bandwidth_gbps()
    rows = optimizer_rows(a.params, copy_gbps, lib) + wgrad_rows(a.tokens, lib)
    print(f"copy bandwidth {copy_gbps:.0f} GB/s; CUDA kernels: {lib.build_id if lib else cuda_kernels.why_missing()}")
    print(table(rows))
    info = machine()
    payload = dict(
        machine=info,
        copy_GBps=copy_gbps,
        bytes_per_param=BYTES_PER_PARAM,
        build_id=lib.build_id if lib else None,
        rows=rows,
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cuda-kernels-bench-{info['device'].replace(' ', '_')}-{info['date'][:19].replace(':', '')}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
