"""`megacrystal eval` with and without the KV cache on a run (the demo's by default): wall time and outputs.

    python benchmarks/eval_decode.py --checkpoint runs/demo [--rounds 3] [--no-loss]

A (cached, as shipped) and B (uncached: `EvalRunner.next_tokens(cache=False)`, i.e. every step runs
every sequence whole, today's decoding before the cache) alternate in one process (B, A, B, A, ...; the
first round warms both up and is not counted), and the medians are compared; the machine is shared,
so the load average is recorded before and after every run, and next to the wall time the CPU time
of the process (with one torch thread, OMP_NUM_THREADS=1, the work done: far less sensitive to the
load than the wall time) and that of the FIM + completion scoring alone. Each run is the whole evaluation
(`evaluation.command.evaluate`, the defaults of `megacrystal eval`: losses, FIM PSM+SPM and completion)
and, with --no-loss, the decoding part alone, with the allocator setting the command makes on the CPU. The FIM and completion predictions of every A run must be
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
    from megacrystal.host_memory import keep_freed_memory

    args = build_parser().parse_args(
        ["--checkpoint", a.checkpoint, "--no-progress", "--device", "cpu"] + (["--no-loss"] if a.no_loss else [])
    )
    keep_freed_memory()  # as `megacrystal eval` on the CPU does
    loaded = load_for_eval(a.checkpoint)
    shipped = engine_runner.EvalRunner.next_tokens

    parts: dict[str, float] = {}  # CPU seconds of this run's losses / FIM / completion

    def timed(module, name):
        fn = getattr(module, name)

        def wrapper(*args, **kwargs):
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[name] = parts.get(name, 0.0) + time.process_time() - t

        setattr(module, name, wrapper)

    from megacrystal.evaluation import completion_scoring, fim_scoring, per_source_loss

    timed(per_source_loss, "source_losses")
    timed(fim_scoring, "score_fim")
    timed(completion_scoring, "score_completion")

    def run(cached: bool) -> tuple[float, float, dict]:
        parts.clear()
        if cached:
            engine_runner.EvalRunner.next_tokens = shipped
        else:
            engine_runner.EvalRunner.next_tokens = lambda self, batch: shipped(self, batch, cache=False)
        try:
            t, c = time.perf_counter(), time.process_time()
            report = evaluate(args, loaded)
            return time.perf_counter() - t, time.process_time() - c, report
        finally:
            engine_runner.EvalRunner.next_tokens = shipped

    times: dict[str, list[float]] = {"cached": [], "uncached": []}
    cpu: dict[str, list[float]] = {"cached": [], "uncached": []}
    decode_cpu: dict[str, list[float]] = {"cached": [], "uncached": []}
    loads, reference = [], None
    for r in range(a.rounds + 1):
        for name in ("uncached", "cached"):
            before = os.getloadavg()
            dt, dc, report = run(name == "cached")
            dec = parts.get("score_fim", 0.0) + parts.get("score_completion", 0.0)
            loads.append(
                dict(
                    round=r,
                    run=name,
                    seconds=round(dt, 3),
                    cpu_seconds=round(dc, 3),
                    parts_cpu_seconds={k: round(v, 3) for k, v in parts.items()},
                    load_before=before,
                    load_after=os.getloadavg(),
                )
            )
            preds = _predictions(report)
            if reference is None:
                reference = preds
            elif preds != reference:
                print(f"eval_decode: {name} predictions differ from the first run's", file=sys.stderr)
                return 1
            if r > 0:
                times[name].append(dt)
                cpu[name].append(dc)
                decode_cpu[name].append(dec)
            print(f"round {r} {name:8s} {dt:7.2f} s wall {dc:7.2f} s CPU (decoding {dec:6.2f})  load {before[0]:.2f}")
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    med_dec = {k: statistics.median(v) for k, v in decode_cpu.items()}
    speedup = med["uncached"] / med["cached"]
    speedup_cpu = med_cpu["uncached"] / med_cpu["cached"]
    speedup_dec = med_dec["uncached"] / med_dec["cached"]
    print(f"median wall: uncached {med['uncached']:.2f} s, cached {med['cached']:.2f} s -> {speedup:.2f}x")
    print(f"median CPU:  uncached {med_cpu['uncached']:.2f} s, cached {med_cpu['cached']:.2f} s -> {speedup_cpu:.2f}x")
    print(
        f"median CPU of FIM + completion: {med_dec['uncached']:.2f} s vs {med_dec['cached']:.2f} s -> {speedup_dec:.2f}x"
    )
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
            cpu_seconds=cpu,
            median_cpu_s=med_cpu,
            speedup_cpu=round(speedup_cpu, 2),
            decoding_cpu_seconds=decode_cpu,
            median_decoding_cpu_s=med_dec,
            speedup_decoding_cpu=round(speedup_dec, 2),
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
