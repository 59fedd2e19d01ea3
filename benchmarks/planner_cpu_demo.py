"""The planner's `cpu` entry against real gloo runs of the demo (examples/demo.yaml).

    python benchmarks/planner_cpu_demo.py --data-dir DIR [--steps 40] [--repeats 2]
    python benchmarks/planner_cpu_demo.py --data-dir DIR --calibrate   # fit the entry's two run-level terms

DIR holds `demo_data/` (`megacrystal demo --skip-train` builds it). Each case is a real
`torchrun --standalone --nproc-per-node N -m megacrystal.train` run (one thread per rank); its step time
is the median `step_time_s` of metrics.jsonl after the first steps. The prediction is `megacrystal
plan` of the same config and layout on the `cpu` hardware entry with the rehearsal's cost source (the
ops the host dispatches per layer and micro-batch counted by rehearsing the torch kernels a CPU runs).
The load average before and after each run is recorded with it. Because this machine is shared, each
case also runs twice more for the CPU time of its ranks (getrusage of the children) at two lengths:
the difference over the extra steps, per rank, is the step's CPU time, which other load does not
inflate the way it inflates wall time.

Calibration (`--calibrate`) uses two runs that are not among the reported cases: the demo on one rank
(no collective: the host time per dispatched op) and tp2 at another shape (seq 64, micro-batch 8: the
gloo latency per collective inside a run, given that). The reported cases dp2, tp2 and pp2 of the demo
as configured are held out. Results go to benchmarks/results/planner-cpu-demo-*.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataclasses import replace  # noqa: E402

from megacrystal.config import load_config  # noqa: E402
from megacrystal.planner import hardware  # noqa: E402
from megacrystal.planner.search import plan_one  # noqa: E402
from megacrystal.planner.shapes import Layout  # noqa: E402
from megacrystal.rehearsal.plan_costs import RehearsalCosts  # noqa: E402

CASES = {  # name: (ranks, overrides); the reported (held-out) cases
    "dp2": (2, []),
    "tp2": (2, ["parallel.tp=2"]),
    "pp2": (2, ["parallel.pp=2"]),
}
CALIBRATION = {  # not reported as predictions: they set host_us_per_op and the gloo latency
    "1rank": (1, []),
    "tp2-seq64-mbs8": (2, ["parallel.tp=2", "data.seq_length=64", "model.max_seq_len=64", "train.micro_batch_size=8"]),
}
COMMON = ["train.eval_interval=0", "train.log_interval=1", "train.save_interval=0", "log.tensorboard=false"]


def measure(data_dir: Path, overrides: list[str], steps: int, skip: int, nproc: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            "-m",
            "megacrystal.train",
            "--config",
            str(ROOT / "examples" / "demo.yaml"),
            f"train.max_steps={steps}",
            f"train.out_dir={out}",
            *COMMON,
            *overrides,
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        load0 = os.getloadavg()
        t = time.time()
        proc = subprocess.run(cmd, cwd=data_dir, env=env, capture_output=True, text=True, timeout=1800)
        wall = time.time() - t
        load1 = os.getloadavg()
        if proc.returncode:
            raise RuntimeError(f"run failed ({proc.returncode}): {proc.stderr[-2000:]}")
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in rows if r["step"] > skip]
    return dict(step_s=statistics.median(times), step_s_all=times, wall_s=wall, load_before=load0, load_after=load1)


def cpu_seconds(data_dir: Path, overrides: list[str], steps: int, nproc: int = 2) -> float:
    """User + system CPU seconds of a whole run (torchrun and its ranks)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    measure(data_dir, overrides, steps, 0, nproc)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def predict(nproc: int, overrides: list[str], hw=None) -> tuple[float, str]:
    cfg = load_config(str(ROOT / "examples" / "demo.yaml"), overrides, validate=False)
    par = cfg.parallel
    dp = nproc // (par.tp * par.pp)
    lay = Layout(
        par.tp,
        par.pp,
        par.vpp,
        dp,
        par.sequence_parallel,
        par.distributed_optimizer and dp > 1,
        cfg.train.micro_batch_size,
    )
    p = plan_one(cfg, lay, hw or hardware.get("cpu"), source=RehearsalCosts(cfg, hardware="cpu"))
    return p.step_s, lay.label()


def cpu_step(data_dir: Path, nproc: int, overrides: list[str], steps: int, skip: int) -> float:
    short = cpu_seconds(data_dir, overrides, skip, nproc)
    long_ = cpu_seconds(data_dir, overrides, steps, nproc)
    return (long_ - short) / (steps - skip) / nproc


def calibrate(data_dir: Path, steps: int, skip: int) -> dict:
    """host_us_per_op from the 1-rank run, then the gloo latency from the tp2 run at another shape:
    the prediction is linear in both (a CPU runs its host work; gloo's collectives are not hidden)."""
    base = hardware.get("cpu")
    meas = {n: cpu_step(data_dir, *CALIBRATION[n], steps, skip) for n in CALIBRATION}

    def pred(name, host_us, lat_us):
        hw = replace(base, host_s_per_op=host_us * 1e-6, intra_lat=lat_us * 1e-6, inter_lat=lat_us * 1e-6)
        return predict(*CALIBRATION[name], hw)[0]

    h0, l0 = base.host_s_per_op * 1e6, base.intra_lat * 1e6
    a0, a1 = pred("1rank", 0.0, l0), pred("1rank", 100.0, l0)
    host = (meas["1rank"] - a0) / ((a1 - a0) / 100.0)
    b0, b1 = pred("tp2-seq64-mbs8", host, 0.0), pred("tp2-seq64-mbs8", host, 1000.0)
    lat = (meas["tp2-seq64-mbs8"] - b0) / ((b1 - b0) / 1000.0)
    print(
        f"calibration: measured {meas}; host_us_per_op {host:.2f} (was {h0:.2f}), gloo latency {lat:.1f} us (was {l0:.1f})"
    )
    return dict(measured_cpu_s_per_rank_step=meas, host_us_per_op=host, latency_us=lat, load=os.getloadavg())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="directory holding demo_data/ (megacrystal demo --skip-train)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=5, help="first steps left out of the median")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument(
        "--calibrate", action="store_true", help="fit host_us_per_op and the gloo latency on the calibration runs"
    )
    a = ap.parse_args(argv)
    data = Path(a.data_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    machine = dict(
        host=platform.node(),
        cores=os.cpu_count(),
        python=sys.version.split()[0],
        date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    if a.calibrate:
        rec = dict(
            machine=machine,
            calibration_runs={k: v[1] for k, v in CALIBRATION.items()},
            **calibrate(data, a.steps, a.skip),
        )
        out = ROOT / "benchmarks" / "results" / f"planner-cpu-calibration-{stamp}.json"
        out.write_text(json.dumps(rec, indent=1, default=str))
        print(f"recorded {out}")
        return 0
    results = []
    for name in a.cases.split(","):
        nproc, over = CASES[name]
        pred, label = predict(nproc, over)
        for i in range(a.repeats):
            m = measure(data, over, a.steps, a.skip, nproc)
            err = (pred - m["step_s"]) / m["step_s"]
            cpu = cpu_step(data, nproc, over, a.steps, a.skip)
            err_cpu = (pred - cpu) / cpu
            results.append(
                dict(
                    case=name,
                    layout=label,
                    repeat=i,
                    predicted_s=pred,
                    error=err,
                    cpu_s_per_rank_step=cpu,
                    error_vs_cpu=err_cpu,
                    **m,
                )
            )
            print(
                f"{name:<4} {label:<32} wall {m['step_s'] * 1e3:6.1f} ms  cpu/rank {cpu * 1e3:6.1f} ms  "
                f"predicted {pred * 1e3:6.1f} ms  error vs wall {err:+.1%}, vs cpu {err_cpu:+.1%}  "
                f"load {m['load_before'][0]:.1f} -> {m['load_after'][0]:.1f}",
                flush=True,
            )
    rec = dict(machine=machine, hardware_entry=hardware.TABLE["cpu"], held_out=True, results=results)
    out = ROOT / "benchmarks" / "results" / f"planner-cpu-demo-{stamp}.json"
    out.write_text(json.dumps(rec, indent=1, default=str))
    print(f"recorded {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
