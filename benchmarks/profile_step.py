"""Profile one engine training step on the GPU: the top operators by device time, and the share of the
step that is optimizer, backward, forward. Used to find where an end-to-end step loses to the matmul rate.

    python benchmarks/profile_step.py [--case crystal-7b-4l] [--rows 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from torch.profiler import ProfilerActivity, profile
from train_throughput import CASES


def main(argv=None) -> int:
    from megacrystal.config import load_config
    from megacrystal.engine.engine import Engine
    from megacrystal.parallel.init import init_distributed

    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="crystal-7b-4l")
    ap.add_argument("--rows", type=int, default=30)
    a = ap.parse_args(argv)
    cfg = load_config(None, CASES[a.case] + ["train.precision=bf16"])
    _, device = init_distributed(cfg)
    e = Engine(cfg, device)
    t, s, v = cfg.train, cfg.data.seq_length, cfg.model.vocab_size
    toks = torch.randint(0, v, (t.global_batch_size, s + 1))
    mbs = [
        dict(
            tokens=toks[i : i + t.micro_batch_size, :-1],
            labels=toks[i : i + t.micro_batch_size, 1:],
            loss_mask=torch.ones(t.micro_batch_size, s),
        )
        for i in range(0, t.global_batch_size, t.micro_batch_size)
    ]
    for _ in range(2):
        e.train_step(mbs, 1e-4)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        e.train_step(mbs, 1e-4)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=a.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
