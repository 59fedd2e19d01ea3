"""Activation memory per layer and step time of `model.recompute` none / selective / full, on the CPU.

    python benchmarks/recompute.py [--kernels torch|triton|both] [--no-record]

Memory: the live heap (glibc `mallinfo2`: bytes in use, arena + mmap) right after a training forward
of the model with 2 and with 6 layers, minus the heap before it; the difference over the 4 extra
layers is the activation memory one layer keeps for its backward (embedding, head and loss cancel).
In elements of the activation dtype per token (fp32 here), against model/recompute.py's accounting
(`activation_elements`: Korthikanti et al. 2022 adjusted for flash attention, SwiGLU, no dropout).
`--kernels triton` runs the fused kernels (what GPUs run) under Triton's interpreter (small shapes);
`torch` the reference ops (what CPUs run), whose SwiGLU keeps silu(gate) as well (f more under none).
Attention is SDPA, on the CPU its flash kernel (q, k, v, output and the log-sum-exp kept).

Time: median `Engine.train_step` of a 4-layer model (h 512, s 512, fp32, one process), same run.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.parallel_bench_util import record, stamp

MODES = ("none", "selective", "full")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def live_heap() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    gc.collect()
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd


def model_cfg(mode: str, layers: int, h: int, s: int, kernels: str, heads: int = 4):
    from megacrystal.config import load_config

    return load_config(
        None,
        [
            f"model.num_layers={layers}",
            f"model.hidden_size={h}",
            f"model.num_heads={heads}",
            f"model.ffn_hidden_size={int(8 * h / 3)}",
            "model.vocab_size=512",
            f"model.max_seq_len={s}",
            f"data.seq_length={s}",
            f"model.recompute={mode}",
            f"model.kernels={kernels}",
            "model.attention_backend=sdpa",
        ],
    ).model


def kept_bytes(mode: str, layers: int, h: int, s: int, b: int, kernels: str) -> int:
    from megacrystal.model.mup import init_parameters
    from megacrystal.model.transformer import Transformer

    cfg = model_cfg(mode, layers, h, s, kernels)
    m = Transformer(cfg)
    init_parameters(m, cfg, 0)
    m.train()
    t = torch.randint(0, 512, (b, s), generator=torch.Generator().manual_seed(0))
    m(tokens=t, labels=t).sum().backward()  # warm: kernels chosen, gradients allocated
    before = live_heap()
    loss = m(tokens=t, labels=t).sum()
    after = live_heap()
    loss.backward()
    return after - before


def memory(kernels: str) -> list[dict]:
    from megacrystal.model.recompute import activation_elements

    h, s, b = (256, 256, 2) if kernels == "torch" else (128, 128, 1)  # the interpreter is slow
    rows = []
    for mode in MODES:
        small, big = kept_bytes(mode, 2, h, s, b, kernels), kept_bytes(mode, 6, h, s, b, kernels)
        per_token = (big - small) / 4 / (b * s) / 4  # fp32 elements per token and layer
        want = activation_elements(model_cfg(mode, 2, h, s, kernels), mode)
        rows.append(
            dict(
                kernels=kernels,
                mode=mode,
                hidden=h,
                seq=s,
                batch=b,
                elements_per_token_per_layer=per_token,
                in_hidden_units=per_token / h,
                accounting_elements=want,
                measured_over_accounting=per_token / want,
            )
        )
        print(
            f"memory  kernels={kernels:6s} {mode:9s} {per_token / h:6.2f} h per token per layer "
            f"(accounting {want / h:5.2f} h, measured/accounting {per_token / want:.3f})",
            flush=True,
        )
    return rows


def step_times(steps: int) -> list[dict]:
    from megacrystal.config import load_config
    from megacrystal.engine.engine import Engine

    h, s = 512, 512
    engines = {}
    t = torch.randint(0, 1024, (1, s + 1), generator=torch.Generator().manual_seed(0))
    mbs = [dict(tokens=t[:, :-1], labels=t[:, 1:], loss_mask=torch.ones(1, s))]
    for mode in MODES:
        base = [
            f"model.recompute={mode}",
            "model.num_layers=4",
            f"model.hidden_size={h}",
            "model.num_heads=8",
            "model.vocab_size=1024",
            f"model.max_seq_len={s}",
            f"data.seq_length={s}",
            "train.global_batch_size=1",
        ]
        engines[mode] = Engine(load_config(None, base), torch.device("cpu"))
        engines[mode].train_step(mbs, 1e-4)  # warm-up
    times = {m: [] for m in MODES}
    for _ in range(steps):  # the modes in turn, so a change in the machine's load hits each alike
        for mode, e in engines.items():
            t0 = time.perf_counter()
            e.train_step(mbs, 1e-4)
            times[mode].append(time.perf_counter() - t0)
    out = [dict(mode=m, step_s=statistics.median(times[m]), steps_s=times[m]) for m in MODES]
    none = out[0]["step_s"]
    for r in out:
        r["vs_none"] = r["step_s"] / none
        print(f"time    {r['mode']:9s} {r['step_s'] * 1e3:7.1f} ms per step ({r['vs_none']:.3f} x none)", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", choices=["torch", "triton", "both"], default="both")
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--part", choices=["memory", "time", "all"], default="all")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    mem, times = [], []
    if args.part in ("memory", "all"):
        for k in ("torch", "triton") if args.kernels == "both" else (args.kernels,):
            if k == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
                # the interpreter must be chosen before triton is imported: a fresh process
                env = dict(os.environ, TRITON_INTERPRET="1")
                cmd = [sys.executable, __file__, "--kernels", "triton", "--part", "memory", "--no-record"]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                print(out, end="")
                mem += [json.loads(line[4:]) for line in out.splitlines() if line.startswith("ROW ")]
                continue
            rows = memory(k)
            mem += rows
            if args.no_record and args.part == "memory":
                for r in rows:
                    print("ROW " + json.dumps(r))
    if args.part in ("time", "all"):
        times = step_times(args.steps)
    if not args.no_record:
        path = record(
            f"recompute-{stamp()}",
            dict(
                description=__doc__.split("\n\n")[1].strip(),
                loadavg_at_start=[round(x, 2) for x in load0],
                torch_threads=1,
                memory=mem,
                step_time=times,
            ),
        )
        print(f"recorded {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
