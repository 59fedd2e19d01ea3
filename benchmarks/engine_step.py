"""One-device training-step throughput and memory of the engine (bf16), with a matmul anchor.

    python benchmarks/engine_step.py [--device cuda] [--layers 12 --hidden 1024 --seq 2048 --mbs 4 --m 2]

Times `Engine.train_step` (all micro-batches, gradient reduction, clipping, optimizer) after two
warm-up steps, and reports tokens/s, model TFLOP/s with Megatron's count
(6*N + 12*layers*hidden*seq per token, no recompute), that figure as a share of a bf16 matmul
measured in the same run, and peak device memory per parameter (replicated optimizer: 18 B/param
of state + activations).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.parallel_bench_util import record  # noqa: E402


def matmul_tflops(device, n=8192, reps=10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def main(argv=None) -> int:
    from megacrystal.config import load_config
    from megacrystal.parallel.engine import Engine
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--mbs", type=int, default=4)
    ap.add_argument("--m", type=int, default=2, help="micro-batches per step")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--family", default="crystal")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    ffn = (int(8 * args.hidden / 3) // 64) * 64
    cfg = load_config(None, [f"model.family={args.family}", f"model.num_layers={args.layers}",
                             f"model.hidden_size={args.hidden}", f"model.num_heads={args.heads}",
                             f"model.ffn_hidden_size={ffn}", "model.vocab_size=32032",
                             f"model.max_seq_len={args.seq}", f"data.seq_length={args.seq}",
                             f"train.micro_batch_size={args.mbs}", f"train.global_batch_size={args.mbs * args.m}",
                             "train.precision=bf16"])
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    e = Engine(cfg, dev)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 32000, (args.mbs * args.m, args.seq + 1), generator=g)
    mbs = [dict(tokens=t[i:i + args.mbs, :-1], labels=t[i:i + args.mbs, 1:],
                loss_mask=torch.ones(args.mbs, args.seq)) for i in range(0, args.mbs * args.m, args.mbs)]
    for _ in range(2):
        e.train_step(mbs, 1e-4)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    losses = [e.train_step(mbs, 1e-4)["loss"] for _ in range(args.steps)]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    n = e.num_parameters()
    tokens = args.mbs * args.m * args.seq
    flops = tokens * (6 * n + 12 * args.layers * args.hidden * args.seq)
    res = dict(params=n, tokens_per_step=tokens, step_s=dt, tokens_per_s=tokens / dt, model_tflops=flops / dt / 1e12,
               losses=losses, config=vars(args), attention=cfg.model.attention_backend)
    if dev.type == "cuda":
        res["peak_bytes_per_param"] = torch.cuda.max_memory_allocated(dev) / n
        res["matmul_bf16_tflops"] = matmul_tflops(dev)
        res["share_of_matmul"] = res["model_tflops"] / res["matmul_bf16_tflops"]
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items() if k != "losses"}, flush=True)
    if not args.no_record:
        print("recorded", record(f"engine_step_{dev.type}", res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
