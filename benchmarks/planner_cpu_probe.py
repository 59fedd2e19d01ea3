"""The `cpu` entry of the planner's hardware table, measured: what one training rank of a 2-rank gloo
run on this machine gets (torchrun gives each rank one thread): fp32 matmul rate (large, and by K),
copy bandwidth, attention (SDPA) rate, host time per autograd op, and gloo all-reduce / p2p between
two processes (latency and bandwidth from a fit over message sizes).

    python benchmarks/planner_cpu_probe.py      # prints the entry, records benchmarks/results/planner-cpu-probe-*.json

Run it on an idle machine: the load average before and after is recorded with the figures."""

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


def best(fn, reps: int = 5, inner: int = 1) -> float:
    fn()
    out = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        out = min(out, (time.perf_counter() - t) / inner)
    return out


def matmul(m: int, n: int, k: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * n * k / best(lambda: a @ b, inner=max(1, int(2e8 / (2 * m * n * k))))


def copy_bw() -> float:
    x = torch.randn(16 * 2**20)
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / best(lambda: y.copy_(x), inner=4)


def attention() -> float:
    q, k, v = (torch.randn(4, 4, 128, 16, requires_grad=True) for _ in range(3))

    def run():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        o.sum().backward()

    fl = 3.5 * 2 * 4 * 4 * 128 * 128 * 16  # causal half of QK^T and AV, fwd + 2.5x bwd
    return fl / best(run, inner=10)


def host_per_op() -> float:
    """Seconds per autograd op (forward or backward) on tiny tensors: pure dispatch."""
    x = torch.randn(8, 8, requires_grad=True)
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


def main() -> int:
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    big = matmul(1024, 1024, 1024)
    by_k = {k: matmul(512, 512, k) for k in (16, 64, 256, 1024)}
    bw = copy_bw()
    att = attention()
    host = host_per_op()
    ar = gloo()
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
        matmul_flops=dict(large_1024=big, **{f"512x512xK{k}": v for k, v in by_k.items()}),
        copy_bytes_per_s=bw,
        sdpa_flops=att,
        host_s_per_op=host,
        gloo_all_reduce=ar,
        entry=entry,
    )
    out = ROOT / "benchmarks" / "results" / f"planner-cpu-probe-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(rec, indent=1))
    print(json.dumps(entry, indent=1))
    print(f"load average {load0} -> {load1}; recorded {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
