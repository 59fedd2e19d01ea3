"""`megacrystal eval` as a user runs it, this source tree against another one (the code before a change).

    git worktree add /tmp/base main
    python benchmarks/eval_vs_baseline.py --baseline-src /tmp/base --checkpoint runs/demo [--rounds 3]

Each run is a fresh `python -m megacrystal.cli eval --checkpoint CKPT --output F` process (start-up,
loading and the whole evaluation: losses, FIM PSM+SPM, completion, with the command's defaults), the
baseline tree and this one alternating (one warm-up pair not counted; medians). Wall time and the CPU
time of the process (user + system, from the kernel's accounting; with OMP_NUM_THREADS=1 it is the work
done, far less sensitive to a shared machine's load than the wall time) are recorded with the load
average. Every run's FIM and completion predictions must equal the baseline's first run's; the script
stops if not. The largest relative difference of a per-source loss from the baseline's is recorded, and,
each round, the CPU time of a process that only imports what loading a checkpoint needs (torch and
torch.distributed.checkpoint, and at exit skips the last cycle collection as `megacrystal eval` does):
the start-up no evaluation can go below. Records benchmarks/results/eval-vs-baseline-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from benchmarks.parallel_bench_util import record  # noqa: E402


def _git(src: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True).stdout.strip()


def _run(src: Path, checkpoint: str, out: Path) -> tuple[float, float, float, dict]:
    env = dict(os.environ, PYTHONPATH=str(src))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "megacrystal.cli", "eval", "--checkpoint", checkpoint, "--output", str(out)]
        + ["--force", "--no-progress", "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"eval_vs_baseline: eval with {src} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    sys_s = after.ru_stime - before.ru_stime
    return wall, after.ru_utime - before.ru_utime + sys_s, sys_s, json.loads(out.read_text())


def import_floor_cpu() -> float:
    """CPU seconds of a process that only imports what reading a checkpoint needs and exits as eval does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import gc, torch, torch.distributed.checkpoint; gc.freeze()"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _predictions(report: dict) -> list[str]:
    return [e["prediction"] for part in ("fim", "completion") for e in report.get(part, {}).get("examples", [])]


def _losses(report: dict) -> dict[str, float]:
    return {k: v["loss"] for k, v in report.get("losses", {}).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-src", required=True, help="source tree of the code to compare against")
    ap.add_argument("--checkpoint", default="runs/demo")
    ap.add_argument("--rounds", type=int, default=3, help="counted pairs (after one warm-up pair)")
    ap.add_argument("--baseline-label", default="", help="what the baseline tree is (when it is no git checkout)")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    trees = {"baseline": Path(a.baseline_src).resolve(), "this": HERE}
    wall: dict[str, list[float]] = {k: [] for k in trees}
    cpu: dict[str, list[float]] = {k: [] for k in trees}
    system: dict[str, list[float]] = {k: [] for k in trees}  # the kernel's part of cpu
    runs, reference, ref_losses, loss_diff, floor = [], None, None, 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds + 1):
            if r > 0:
                floor.append(import_floor_cpu())
            for name, src in trees.items():
                load = os.getloadavg()
                w, c, kern, report = _run(src, a.checkpoint, Path(tmp) / f"{name}.json")
                preds = _predictions(report)
                reference = preds if reference is None else reference
                losses = _losses(report)
                ref_losses = losses if ref_losses is None else ref_losses
                if set(losses) != set(ref_losses):
                    print(f"eval_vs_baseline: round {r}: {name} scored other sources", file=sys.stderr)
                    return 1
                for k, v in losses.items():
                    loss_diff = max(loss_diff, abs(v - ref_losses[k]) / abs(ref_losses[k]))
                if preds != reference:
                    print(
                        f"eval_vs_baseline: round {r}: {name}'s predictions differ from the baseline's", file=sys.stderr
                    )
                    return 1
                runs.append(
                    dict(
                        round=r,
                        tree=name,
                        wall_s=round(w, 3),
                        cpu_s=round(c, 3),
                        system_s=round(kern, 3),
                        load_before=load,
                    )
                )
                if r > 0:
                    wall[name].append(w)
                    cpu[name].append(c)
                    system[name].append(kern)
                print(f"round {r} {name:8s} {w:7.2f} s wall {c:7.2f} s CPU  load {load[0]:.2f}", flush=True)
    med_w = {k: statistics.median(v) for k, v in wall.items()}
    med_c = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"median wall: baseline {med_w['baseline']:.2f} s, this {med_w['this']:.2f} s")
    print(f"median CPU:  baseline {med_c['baseline']:.2f} s, this {med_c['this']:.2f} s")
    print(f"median CPU of importing torch + torch.distributed.checkpoint alone: {statistics.median(floor):.2f} s")
    print(f"largest relative difference of a per-source loss: {loss_diff:.2e}")
    path = record(
        f"eval-vs-baseline-{time.strftime('%Y%m%d-%H%M%S')}{'-' + a.tag if a.tag else ''}",
        dict(
            what="megacrystal eval (defaults) as a CLI process: this tree vs a baseline tree",
            checkpoint=a.checkpoint,
            trees={
                k: dict(commit=_git(v, "rev-parse", "--short", "HEAD"), branch=_git(v, "branch", "--show-current"))
                for k, v in trees.items()
            },
            baseline_label=a.baseline_label,
            omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
            design="CLI processes alternated, one warm-up pair not counted, medians",
            wall_s=wall,
            cpu_s=cpu,
            median_wall_s=med_w,
            median_cpu_s=med_c,
            median_system_s={k: statistics.median(v) for k, v in system.items()},
            speedup_wall=round(med_w["baseline"] / med_w["this"], 2),
            speedup_cpu=round(med_c["baseline"] / med_c["this"], 2),
            import_floor_cpu_s=floor,
            median_import_floor_cpu_s=statistics.median(floor),
            identical_predictions=True,
            predictions=len(reference),
            losses=ref_losses,
            max_loss_rel_diff=loss_diff,
            runs=runs,
        ),
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
