"""Memory per rank: the distributed optimizer (ZeRO-1) against the replicated one, bf16 params.

    python benchmarks/optimizer_memory.py [--dp 4] [--device cpu|cuda] [--no-record]

dp ranks (gloo; on cuda all ranks share GPU 0) each build the same ~5 M-parameter model with
bf16 parameters and fp32 gradients, and take 2 training steps. Recorded per rank:
  state_bytes_per_param  bytes of every tensor the engine keeps between steps -- parameters,
                         the fp32 gradient buffer, fp32 masters, Adam moments (unique storages,
                         bucket padding included) -- divided by the model's parameter count
  theory                 2 (bf16 param) + 4 (fp32 grad) + 12 (fp32 master, m, v), the last term
                         divided by dp for the distributed optimizer: 18 vs 6 + 12/dp
  peak_bytes_per_param   cpu: growth of the process's peak RSS (VmHWM) from just before building
                         the engine to after the steps; cuda: torch.cuda.max_memory_allocated over
                         the same window. Includes activations and temporaries (small here:
                         micro-batch 1 x 64 tokens) and, on CPU, allocator slack and gloo's
                         staging copies: its reduce-scatter and all-gather copy whole buckets, so
                         the CPU run is repeated with the in-place all-reduce fallbacks
                         (`collectives.FORCE_FALLBACK`), which stage nothing for the reduction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.parallel_bench_util import record, spawn

MODEL = [
    "model.num_layers=4",
    "model.hidden_size=256",
    "model.num_heads=4",
    "model.ffn_hidden_size=1024",
    "model.vocab_size=4096",
    "model.max_seq_len=64",
    "model.mup_base_width=64",
    "data.seq_length=64",
    "train.micro_batch_size=1",
    "train.precision=bf16",
    "parallel.bucket_size_mb=1",
]


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _storages(tensors) -> int:
    seen = {}
    for t in tensors:
        if t is None:
            continue
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def engine_state_tensors(e) -> list:
    out = [p for m in e.chunks for p in m.parameters()] + [e.buffers.grad_buffer]
    if e.buffers.param_buffer is not None:
        out.append(e.buffers.param_buffer)
    opt = e.optimizer
    if hasattr(opt, "shards"):
        for s in opt.shards:
            out += [s["exp_avg"], s["exp_avg_sq"], s["master"]]
    else:
        for g in opt.groups:
            out += g["masters"] + g["exp_avg"] + g["exp_avg_sq"]
    return out


def _rank(rank, world, distributed: bool, device: str, fallback: bool):
    from megacrystal.config import load_config
    from megacrystal.engine.engine import Engine
    from megacrystal.parallel import collectives

    collectives.FORCE_FALLBACK = fallback
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    cfg = load_config(
        None,
        MODEL + [f"train.global_batch_size={2 * world}", f"parallel.distributed_optimizer={str(distributed).lower()}"],
    )
    g = torch.Generator().manual_seed(rank)
    t = torch.randint(0, 4096, (2, 65), generator=g)
    mbs = [dict(tokens=t[i : i + 1, :-1], labels=t[i : i + 1, 1:], loss_mask=torch.ones(1, 64)) for i in range(2)]
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _rss("VmRSS")
    e = Engine(cfg, dev)
    for _ in range(2):
        out = e.train_step(mbs, 1e-3)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = _rss("VmHWM") - base
    n = e.num_parameters()
    local = sum(p.numel() for m in e.chunks for p in m.parameters())
    return dict(
        params=n,
        local_param_elements=local,
        state_bytes=_storages(engine_state_tensors(e)),
        peak_bytes=peak,
        loss=out["loss"],
        buffer_elements=e.buffers.numel,
    )


def measure(dp: int, device: str, fallback: bool = False) -> list[dict]:
    rows = []
    for distributed in (False, True):
        res = spawn(_rank, dp, (distributed, device, fallback))
        n = res[0]["params"]
        theory = 2 + 4 + (12 / dp if distributed else 12)
        rows.append(
            dict(
                optimizer="distributed (ZeRO-1)" if distributed else "replicated",
                dp=dp,
                device=device,
                collectives="in-place all-reduce fallbacks" if fallback else "native",
                params=n,
                theory_bytes_per_param=theory,
                state_bytes_per_param=[r["state_bytes"] / n for r in res],
                peak_bytes_per_param=[r["peak_bytes"] / n for r in res],
                padded_elements_per_param=res[0]["buffer_elements"] / res[0]["local_param_elements"],
                loss_after_2_steps=res[0]["loss"],
            )
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dp", type=int, default=4)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    rows = measure(args.dp, args.device)
    if args.device == "cpu":  # gloo's reduce-scatter/all-gather stage full-size copies on the CPU
        rows += measure(args.dp, args.device, fallback=True)
    for r in rows:
        st = " ".join(f"{x:.2f}" for x in r["state_bytes_per_param"])
        pk = " ".join(f"{x:.2f}" for x in r["peak_bytes_per_param"])
        print(
            f"{r['optimizer']:22s} [{r['collectives']}] dp={r['dp']} {r['params'] / 1e6:.2f} M params: "
            f"theory {r['theory_bytes_per_param']:.2f} "
            f"B/param; engine state per rank {st}; peak per rank {pk}",
            flush=True,
        )
    if not args.no_record:
        name = "optimizer_memory" if args.device == "cpu" else "optimizer_memory_cuda"
        path = record(name, dict(description=__doc__.split("\n\n", 1)[1].strip(), model=MODEL, results=rows))
        print(f"recorded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
