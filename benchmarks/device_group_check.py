"""Two processes on one GPU with a device-only process group, against one process (called by gpu_check.sh).

    python benchmarks/device_group_check.py --out benchmarks/results [--fusion torch|cuda] [--steps 3]

`parallel.backend: cuda:gloo` (test-only) registers gloo for CUDA tensors alone, so, as on NCCL, a host
tensor in a training collective raises; both ranks run on GPU 0. Cases (synthetic batches of
`megacrystal.engine.smoke`, the same global batch whatever the layout):
    tp2        fp64, tensor parallel over the two ranks            == 1 process within 1e-9 (relative)
    dp2-zero   fp64, data parallel + distributed optimizer          == 1 process within 1e-9
    dp2-fusion bf16, overlapped reduction + gradient-accumulation fusion (weight gradients go straight
               into main_grad: autograd's `.grad` is None), 4 micro-batches per step: every bucket's
               post-accumulate-hook count reaches zero and the bucket is launched during the backward
               (the combination Megatron refuses because its hooks can deadlock), on both ranks, and
               the losses track the unfused run within 2e-2
Pipeline transfers are not covered (gloo has no CUDA send/recv; the rehearsal covers them). Writes
device-group-<gpu>-<stamp>.json under --out; exits 1 when a case fails. `--worker` is the per-rank entry.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = [
    "model.preset=tiny",
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_heads=4",
    "model.ffn_hidden_size=128",
    "model.vocab_size=512",
    "model.attention_backend=math",
    "data.seq_length=32",
    "train.global_batch_size=8",
    "train.micro_batch_size=1",
    "train.device=cuda",
]
DEVICE_GROUP = ["parallel.backend=cuda:gloo"]


def cases(fusion: str) -> list[dict]:
    fp64 = ["train.precision=fp64"]
    bf16 = ["train.precision=bf16", "parallel.overlap_grad_reduce=true", "parallel.bucket_size_mb=0.05"]  # ~9 buckets
    return [
        dict(name="tp2", nproc=2, overrides=fp64 + ["parallel.tp=2"], ref=(1, fp64), rtol=1e-9),
        dict(
            name="dp2-zero",
            nproc=2,
            overrides=fp64 + ["parallel.distributed_optimizer=true"],
            ref=(1, fp64),
            rtol=1e-9,
        ),
        dict(
            name="dp2-fusion",
            nproc=2,
            overrides=bf16 + [f"model.grad_accum_fusion={fusion}"],
            ref=(2, bf16 + ["model.grad_accum_fusion=off"]),
            rtol=2e-2,
            hooks=True,
        ),
    ]


def worker(overrides: list[str], steps: int, out: str) -> int:
    """One rank: train `steps` synthetic steps; write losses, norms and the bucket counts seen at the
    end of each backward to OUT.rank<r>.json."""
    sys.path.insert(0, str(ROOT))
    from megacrystal.config import load_config
    from megacrystal.engine.engine import Engine
    from megacrystal.engine.smoke import split_for_rank, synthetic_batch
    from megacrystal.parallel.init import init_distributed
    from megacrystal.parallel.state import destroy

    cfg = load_config(None, MODEL + overrides)
    grid, device = init_distributed(cfg)
    engine = Engine(cfg, device, grid)
    seen = []
    finish = engine.buffers.finish

    def observed_finish():  # before the reduction completes: what the hooks did during the backward
        seen.append([(b.pending, b.launched) for b in engine.buffers.buckets])
        finish()

    engine.buffers.finish = observed_finish
    t = cfg.train
    rec = dict(rank=grid.rank, layout=grid.layout(), fusion=getattr(engine, "wgrad_fusion", None), steps=[])
    for step in range(steps):
        batch = synthetic_batch(step, t.global_batch_size, cfg.data.seq_length, cfg.model.vocab_size, t.seed)
        o = engine.train_step(split_for_rank(batch, grid.dp_rank, grid.dp_size, t.micro_batch_size), 1e-3)
        rec["steps"].append(dict(loss=o["loss"], grad_norm=o["grad_norm"], skipped=o["skipped"]))
    rec["buckets"] = seen
    Path(f"{out}.rank{grid.rank}.json").write_text(json.dumps(rec))
    destroy()
    return 0


def launch(nproc: int, overrides: list[str], steps: int, out: str, timeout: int) -> tuple[int, str, list[dict]]:
    me = [str(Path(__file__).resolve()), "--worker", "--steps", str(steps), "--json", out, "--"]
    if nproc == 1:
        cmd = [sys.executable, *me, *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
        cmd += [*me, *overrides, *DEVICE_GROUP]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, err = p.returncode, "\n".join(x for x in p.stderr.splitlines() if " INFO " not in x)[-3000:]
    except subprocess.TimeoutExpired:
        rc, err = 124, f"timed out after {timeout} s (a hang: a collective some rank never issued?)"
    recs = []
    for r in range(nproc):
        f = Path(f"{out}.rank{r}.json")
        recs.append(json.loads(f.read_text()) if f.is_file() else None)
    return rc, err, recs


def compare(case: dict, got: list, want: list) -> list[str]:
    problems = []
    if any(r is None for r in got + want):
        return ["a rank wrote no result"]
    for i, (a, b) in enumerate(zip(got[0]["steps"], want[0]["steps"], strict=True)):
        for k in ("loss", "grad_norm"):
            if abs(a[k] - b[k]) > case["rtol"] * abs(b[k]):
                problems.append(f"step {i} {k}: {a[k]!r} vs {b[k]!r} (rtol {case['rtol']})")
    if case.get("hooks"):
        if got[0]["fusion"] in (None, "off"):
            problems.append(f"gradient-accumulation fusion did not engage ({got[0]['fusion']})")
        for r in got:
            for i, buckets in enumerate(r["buckets"]):
                bad = [j for j, (pending, launched) in enumerate(buckets) if pending != 0 or not launched]
                if bad:
                    problems.append(f"rank {r['rank']} step {i}: buckets {bad} not counted down/launched by the hooks")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results", help="where the JSON summary goes")
    ap.add_argument("--fusion", default="torch", choices=["torch", "cuda"], help="model.grad_accum_fusion to check")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=180, help="seconds per launch")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.overrides, a.steps, a.json)
    import torch

    if not torch.cuda.is_available():
        print("device_group_check: needs a CUDA GPU", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0)
    results, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        for c in cases(a.fusion):
            rc, err, got = launch(c["nproc"], c["overrides"], a.steps, f"{tmp}/{c['name']}", a.timeout)
            n, ref = c["ref"]
            rrc, rerr, want = launch(n, ref, a.steps, f"{tmp}/{c['name']}-ref", a.timeout)
            problems = [f"exit {rc}: {err}"] if rc else []
            problems += [f"reference exit {rrc}: {rerr}"] if rrc else []
            problems = problems or compare(c, got, want)
            failed |= bool(problems)
            results.append(dict(case=c["name"], overrides=c["overrides"], passed=not problems, problems=problems))
            print(f"{c['name']}: {'ok' if not problems else 'FAILED: ' + '; '.join(problems)[:2000]}", flush=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = dict(gpu=gpu, torch=torch.__version__, date=stamp, fusion=a.fusion, backend="cuda:gloo", cases=results)
    path = out / f"device-group-{a.fusion}-{gpu.replace(' ', '_')}-{stamp}.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
