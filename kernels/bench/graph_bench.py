"""Kernel timings with the host out of the picture: fwd+bwd through autograd captured in a CUDA graph
and replayed (`triton.testing.do_bench_cudagraph`), for ours and every baseline of bench_cases."""

from __future__ import annotations

import bench_cases
import torch
import triton.testing


def graph_rows(copy: float, log) -> list[dict]:
    """fwd+bwd through autograd replayed from a CUDA graph: the GPU time alone (no host launch overhead)."""
    out, broken = [], False
    for make in (bench_cases.norm_cases, bench_cases.rotary_cases, bench_cases.cross_entropy_cases):
        for case in make(True, "cuda", False):
            if "16384x4096" not in case.name and case.op not in ("rotary", "cross_entropy"):
                continue
            for prov, fn in case.providers.items():
                if not (
                    prov == "megacrystal-triton"
                    or prov.startswith("torch-eager")
                    or prov.startswith("liger")
                    or (prov == "megacrystal-reference" and case.op != "layernorm" and case.op != "rmsnorm")
                ):
                    continue
                row = dict(op=case.op, case=case.name, mode="fwd+bwd graph", provider=prov)
                if broken:
                    row["skipped"] = "an earlier capture failed"
                    out.append(row)
                    continue
                try:
                    args = case.make(True)
                    with torch.no_grad():  # no autograd graph may outlive this call: its AccumulateGrad
                        outs = fn(*args)  # nodes would sit on this stream, not the capture stream
                    outs = outs if isinstance(outs, tuple) else (outs,)
                    grads = [torch.rand_like(o) if o.dtype == torch.float32 else torch.randn_like(o) for o in outs]
                    del outs
                    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

                    def step(fn=fn, args=args, grads=grads):
                        o = fn(*args)
                        torch.autograd.backward(o if isinstance(o, tuple) else (o,), grads)

                    row["ms"] = float(
                        triton.testing.do_bench_cudagraph(step, rep=40, grad_to_none=leaves, return_mode="median")
                    )
                    row["GBps"] = case.bytes["fwd+bwd"] / (row["ms"] * 1e-3) / 1e9
                    row["pct_copy"] = 100 * row["GBps"] / copy
                except Exception as e:  # a baseline that cannot be captured must not end the run
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:120]
                    broken = "capture" in str(e).lower()  # a failed capture can poison the CUDA state
                log(f"  graph {case.op} {case.name} {prov}: {row.get('ms', row.get('error'))}")
                out.append(row)
                torch.cuda.empty_cache()
    return out
