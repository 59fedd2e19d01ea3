"""A planner hardware entry, measured on this machine.

    python benchmarks/planner_probe.py               # the `cpu` entry: one training rank of a 2-rank
                                                     # gloo run (torchrun gives each rank one thread)
    python benchmarks/planner_probe.py --device cuda # a GPU's efficiencies (bf16), for its entry

Measures the matmul rate (large, and by K: the K/(K + k_half) term), copy bandwidth, attention (SDPA,
causal) rate, host time per autograd op, and on CPU gloo all-reduce between two processes (latency
and bandwidth from the smallest and largest message). Records benchmarks/results/planner-probe-*.json
with the load average before and after (run it on an idle machine)."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


DEV = torch.device("cpu")
DT = torch.float32


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def best(fn, reps: int = 5, inner: int = 1) -> float:
    fn()
    out = float("inf")
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        out = min(out, (time.perf_counter() - t) / inner)
    return out


def matmul(m: int, n: int, k: int) -> float:
    a, b = torch.randn(m, k, device=DEV, dtype=DT), torch.randn(k, n, device=DEV, dtype=DT)
    scale = 1e4 if DEV.type == "cuda" else 1
    return 2 * m * n * k / best(lambda: a @ b, inner=max(1, int(2e8 * scale / (2 * m * n * k))))


def copy_bw() -> float:
    x = torch.randn((256 if DEV.type == "cuda" else 16) * 2**20, device=DEV)
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / best(lambda: y.copy_(x), inner=4)


def attention() -> float:
    b, h, s, d = (4, 32, 2048, 128) if DEV.type == "cuda" else (4, 4, 128, 16)
    q, k, v = (torch.randn(b, h, s, d, device=DEV, dtype=DT, requires_grad=True) for _ in range(3))

    def run():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        o.sum().backward()

    fl = 3.5 * 2 * b * h * s * s * d  # causal half of QK^T and AV, fwd + 2.5x bwd
    return fl / best(run, inner=10)


def host_per_op() -> float:
    """Seconds per autograd op (forward or backward) on tiny tensors: pure dispatch."""
    x = torch.randn(8, 8, device=DEV, requires_grad=True)
    n = 200

    def run():
        y = x
        for _ in range(n):
            y = y * 1.0001
        y.sum().backward()

    return best(run, inner=5) / (2 * n)


def _worker(rank: int, path: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    res = []
    for nbytes in (4096, 65536, 2**20, 4 * 2**20, 16 * 2**20):
        t = torch.zeros(nbytes // 4)
        for _ in range(3):
            dist.all_reduce(t)
        best_ar = float("inf")
        for _ in range(7):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            best_ar = min(best_ar, time.perf_counter() - t0)
        res.append((nbytes, best_ar))
    if rank == 0:
        out["all_reduce"] = res
    dist.destroy_process_group()


def gloo() -> list:
    with tempfile.TemporaryDirectory() as d, mp.Manager() as man:
        out = man.dict()
        mp.spawn(_worker, args=(os.path.join(d, "rdv"), out), nprocs=2, join=True)
        return list(out["all_reduce"])


def main(argv=None) -> int:
    global DEV, DT
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    a = ap.parse_args(argv)
    gpu = a.device == "cuda"
    DEV, DT = torch.device(a.device), (torch.bfloat16 if gpu else torch.float32)
    if not gpu:
        torch.set_num_threads(1)
    load0 = os.getloadavg()
    n = 8192 if gpu else 1024
    big = matmul(n, n, n)
    mk = 8192 if gpu else 512
    by_k = {k: matmul(mk, mk, k) for k in ((128, 256, 1024, 4096) if gpu else (16, 64, 256, 1024))}
    shapes = (
        {
            f"{m}x{nn}x{k}": matmul(m, nn, k)
            for m, nn, k in (
                (8192, 2048, 2048),
                (8192, 6144, 2048),
                (8192, 4096, 4096),
                (8192, 11008, 4096),
                (8192, 4096, 11008),
            )
        }
        if gpu
        else {}
    )
    bw = copy_bw()
    att = attention()
    host = host_per_op()
    ar = [(4096, 1e-5), (2**24, 1e-2)] if gpu else gloo()
    load1 = os.getloadavg()
    # ring all-reduce of 2 ranks: 2*(1/2)*M/B + 2*alpha: fit alpha, B on the smallest and largest message
    (m0, t0), (m1, t1) = ar[0], ar[-1]
    busbw = (m1 - m0) / (t1 - t0)
    alpha = max(1e-6, (t0 - m0 / busbw) / 2)
    # K/(K + k_half) through the 512x512xK rates against the largest of them (least squares on 1/eff - 1 = k_half/K)
    top = max(by_k.values())
    k_half = max(0.0, sum((top / v - 1) * k for k, v in by_k.items()) / len(by_k))
    big = max(big, top)
    entry = dict(
        name=f"CPU rank, one thread ({platform.processor() or platform.machine()}), gloo between local processes",
        memory_gb=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9 / 2, 1),
        peak_tflops=dict(fp32=round(big / 1e12, 4), fp64=round(big / 2e12, 4), bf16=round(big / 1e12, 4)),
        hbm_gb_s=round(bw / 1e9, 2),
        memory_efficiency=1.0,
        sms=1,
        gemm_tile=[1, 1],
        gemm_efficiency=1.0,
        gemm_k_half=round(k_half, 1),
        attention_efficiency=dict(flash=round(att / big, 3), sdpa=round(att / big, 3)),
        nvlink_gb_s=round(busbw / 1e9, 3),
        nvlink_efficiency=1.0,
        nvlink_latency_us=round(alpha * 1e6, 1),
        network_gb_s=round(busbw / 1e9, 3),
        gpus_per_node=2,
        launch_us=0.0,
        host_us_per_op=round(host * 1e6, 2),
        async_launch=False,
    )
    rec = dict(
        machine=dict(
            host=platform.node(),
            cpu=platform.processor(),
            cores=os.cpu_count(),
            python=sys.version.split()[0],
            torch=torch.__version__,
            date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        ),
        load_before=load0,
        load_after=load1,
        device=a.device,
        matmul_flops=dict(large=big, **{f"{mk}x{mk}xK{k}": v for k, v in by_k.items()}, **shapes),
        copy_bytes_per_s=bw,
        sdpa_flops=att,
        host_s_per_op=host,
        gloo_all_reduce=None if gpu else ar,
        entry=entry,
    )
    name = torch.cuda.get_device_name().replace(" ", "_") if gpu else "cpu"
    out = ROOT / "benchmarks" / "results" / f"planner-probe-{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(rec, indent=1))
    print(json.dumps(entry, indent=1))
    print(f"load average {load0} -> {load1}; recorded {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
