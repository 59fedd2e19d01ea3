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


def clock() -> float:
    """CPU time of this thread on a CPU (other load on a shared machine does not count), wall time on a GPU."""
    return time.perf_counter() if DEV.type == "cuda" else time.thread_time()


def best(fn, reps: int = 5, inner: int = 1) -> float:
    fn()
    out = float("inf")
    for _ in range(reps):
        sync()
        t = clock()
        for _ in range(inner):
            fn()
        sync()
        out = min(out, (clock() - t) / inner)
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


def special_rate() -> dict:
    """Transcendental evaluations per second: exp (the ceiling the planner uses), and for reference
    SiLU and log-softmax per element."""
    x = torch.randn(2**22, device=DEV)
    y = torch.randn(1024, 4096, device=DEV)
    return dict(
        exp=x.numel() / best(lambda: torch.exp(x)),
        silu=x.numel() / best(lambda: F.silu(x)),
        log_softmax=y.numel() / best(lambda: torch.log_softmax(y, -1)),
    )


def gemm_fit(rates: dict) -> tuple[float, float, float]:
    """(e, k_half, n_half) with rate(n, k) ~ e * k/(k + k_half) * n/(n + n_half), by a grid over the
    halves and least squares of the scale on log rates."""
    import math

    best_fit = None
    for kh in range(0, 513, 4):
        for nh in range(0, 513, 4):
            shape = {nk: (nk[1] / (nk[1] + kh)) * (nk[0] / (nk[0] + nh)) for nk in rates}
            logs = [math.log(r / shape[nk]) for nk, r in rates.items()]
            e = math.exp(sum(logs) / len(logs))
            err = sum((math.log(r) - math.log(e * shape[nk])) ** 2 for nk, r in rates.items())
            if best_fit is None or err < best_fit[0]:
                best_fit = (err, e, kh, nh)
    return best_fit[1], best_fit[2], best_fit[3]


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


def engine_overhead() -> dict:
    """The engine's own host cost on this CPU, from train_step of a degenerate model (hidden 16, 16
    tokens: the arithmetic is negligible) at 1 and 3 layers and 1 and 3 micro-batches, in thread CPU
    time: seconds per step, per micro-batch and per layer and micro-batch."""
    sys.path.insert(0, str(ROOT))
    from megacrystal.config import load_config
    from megacrystal.engine.engine import Engine
    from megacrystal.engine.smoke import split_for_rank, synthetic_batch

    def step_time(layers: int, m: int) -> float:
        ov = [
            "model.preset=tiny",
            f"model.num_layers={layers}",
            "model.hidden_size=16",
            "model.num_heads=2",
            "model.ffn_hidden_size=32",
            "model.vocab_size=64",
            "model.max_seq_len=16",
            "model.mup_base_width=16",
            "data.seq_length=16",
            "train.micro_batch_size=1",
            f"train.global_batch_size={m}",
            "train.device=cpu",
        ]
        engine = Engine(load_config(None, ov), torch.device("cpu"))
        mbs = split_for_rank(synthetic_batch(0, m, 16, 64, 0), 0, 1, 1)
        return best(lambda: engine.train_step(mbs, 1e-3), reps=7, inner=3)

    t11, t31, t13 = step_time(1, 1), step_time(3, 1), step_time(1, 3)
    per_layer = (t31 - t11) / 2
    per_mb = (t13 - t11) / 2 - per_layer
    return dict(per_layer_mb_s=per_layer, per_mb_s=per_mb, fixed_s=t11 - per_layer - per_mb, samples=[t11, t31, t13])


def _worker(rank: int, path: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    import resource

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
        n = 30
        dist.barrier()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(n):
            dist.all_reduce(t)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) / n
        res.append((nbytes, max(best_ar, cpu)))
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
    grid = (
        {} if gpu else {(n_, k_): matmul(512, n_, k_) for n_ in (64, 256, 1024, 4096) for k_ in (64, 256, 1024, 4096)}
    )
    bw = copy_bw()
    special = None if gpu else special_rate()
    att = attention()
    host = host_per_op()
    eng = None if gpu else engine_overhead()
    ar = [(4096, 1e-5), (2**24, 1e-2)] if gpu else gloo()
    load1 = os.getloadavg()
    if eng is not None:  # host time per op as the engine's layer shows it, on the planner's op count of a layer
        from megacrystal.planner.costs import FORMULA
        from megacrystal.planner.shapes import Features, LayerShape, ModelShape

        tiny = ModelShape(layers=1, hidden=16, heads=2, kv_heads=2, head_dim=8, ffn=32, vocab=64)
        n_ops = len(
            FORMULA.layer(LayerShape(tiny, 1, False, "none", 1, 16, Features(precision="fp32", param_bytes=4))).ops
        )
        host = eng["per_layer_mb_s"] / n_ops
        eng["planner_ops_per_layer"] = n_ops
    # ring all-reduce of 2 ranks: 2*(1/2)*M/B + 2*alpha: fit alpha, B on the smallest and largest message
    (m0, t0), (m1, t1) = ar[0], ar[-1]
    busbw = (m1 - m0) / (t1 - t0)
    alpha = max(1e-6, (t0 - m0 / busbw) / 2)
    if gpu:  # K/(K + k_half) through the rates by K against the largest (least squares on 1/eff - 1 = k_half/K)
        top = max(by_k.values())
        k_half, n_half = max(0.0, sum((top / v - 1) * k for k, v in by_k.items()) / len(by_k)), 0.0
        big = max(big, top)
    else:  # the 512 x N x K grid: scale, k_half, n_half
        big, k_half, n_half = gemm_fit(grid)
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
        gemm_n_half=round(n_half, 1),
        **({} if gpu else dict(special_gelem_s=round(special["exp"] / 1e9, 4))),
        attention_efficiency=dict(flash=round(att / big, 3), sdpa=round(att / big, 3)),
        nvlink_gb_s=round(busbw / 1e9, 3),
        nvlink_efficiency=1.0,
        nvlink_latency_us=round(alpha * 1e6, 1),
        network_gb_s=round(busbw / 1e9, 3),
        gpus_per_node=2,
        launch_us=0.0,
        host_us_per_op=round(host * 1e6, 2),
        async_launch=False,
        step_overhead_us=round(eng["fixed_s"] * 1e6, 1) if eng else 0.0,
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
        matmul_flops=dict(
            large=big,
            **{f"{mk}x{mk}xK{k}": v for k, v in by_k.items()},
            **shapes,
            **{f"512x{n_}x{k_}": v for (n_, k_), v in grid.items()},
        ),
        special_per_s=special,
        copy_bytes_per_s=bw,
        sdpa_flops=att,
        host_s_per_op=host,
        engine_overhead=eng,
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
