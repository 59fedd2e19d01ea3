"""`megacrystal eval` with and without the KV cache on a run (the demo's by default): wall time and outputs.

    python benchmarks/eval_decode.py --checkpoint runs/demo [--rounds 3] [--no-loss]

A (cached, as shipped) and B (uncached: `EvalRunner.next_tokens(cache=False)`, i.e. every step runs
every sequence whole, today's decoding before the cache) alternate in one process (B, A, B, A, ...; the
first round warms both up and is not counted), and the medians are compared; the machine is shared,
so the load average is recorded before and after every run. Each run is the whole evaluation
(`evaluation.command.evaluate`, the defaults of `megacrystal eval`: losses, FIM PSM+SPM and completion)
and, with --no-loss, the decoding part alone. The FIM and completion predictions of every A run must be
identical to every B run's (fp32 on CPU): the script stops if they are not. Records
benchmarks/results/eval-decode-<date>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.parallel_bench_util import machine, record


def _predictions(report: dict) -> list[str]:
    return [e["prediction"] for part in ("fim", "completion") for e in report.get(part, {}).get("examples", [])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="runs/demo")
    ap.add_argument("--rounds", type=int, default=3, help="counted A/B pairs (after one warm-up pair)")
    ap.add_argument("--no-loss", action="store_true", help="time FIM + completion only")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    a = ap.parse_args()

    import torch

    from megacrystal.evaluation import engine_runner
    from megacrystal.evaluation.command import build_parser, evaluate
    from megacrystal.evaluation.model_loading import load_for_eval

    args = build_parser().parse_args(
        ["--checkpoint", a.checkpoint, "--no-progress", "--device", "cpu"] + (["--no-loss"] if a.no_loss else [])
    )
    loaded = load_for_eval(a.checkpoint)
    shipped = engine_runner.EvalRunner.next_tokens

    def run(cached: bool) -> tuple[float, dict]:
        if cached:
            engine_runner.EvalRunner.next_tokens = shipped
        else:
            engine_runner.EvalRunner.next_tokens = lambda self, batch: shipped(self, batch, cache=False)
        try:
            t = time.perf_counter()
            report = evaluate(args, loaded)
            return time.perf_counter() - t, report
        finally:
            engine_runner.EvalRunner.next_tokens = shipped

    times: dict[str, list[float]] = {"cached": [], "uncached": []}
    loads, reference = [], None
    for r in range(a.rounds + 1):
        for name in ("uncached", "cached"):
            before = os.getloadavg()
            dt, report = run(name == "cached")
            loads.append(dict(round=r, run=name, seconds=round(dt, 3), load_before=before, load_after=os.getloadavg()))
            preds = _predictions(report)
            if reference is None:
                reference = preds
            elif preds != reference:
                print(f"eval_decode: {name} predictions differ from the first run's", file=sys.stderr)
                return 1
            if r > 0:
                times[name].append(dt)
            print(f"round {r} {name:8s} {dt:7.2f} s  load {before[0]:.2f}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    speedup = med["uncached"] / med["cached"]
    print(f"median: uncached {med['uncached']:.2f} s, cached {med['cached']:.2f} s -> {speedup:.2f}x")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    name = f"eval-decode-{time.strftime('%Y%m%d-%H%M%S')}{'-' + a.tag if a.tag else ''}"
    path = record(
        name,
        dict(
            what="megacrystal eval (defaults" + (", --no-loss" if a.no_loss else "") + ") with vs without the KV cache",
            checkpoint=a.checkpoint,
            model=report["model"],
            settings=report["settings"],
            design="A/B alternated in one process, one warm-up pair not counted, medians",
            commit=commit,
            threads=torch.get_num_threads(),
            seconds=times,
            median_s=med,
            speedup=round(speedup, 2),
            identical_predictions=True,
            predictions=len(reference),
            generated_chars=sum(len(p) for p in reference),
            runs=loads,
            machine_extra=dict(cpu_model=_cpu_model(), load_at_end=os.getloadavg()),
        ),
    )
    print(path)
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return machine().get("cpu", "")


if __name__ == "__main__":
    sys.exit(main())
