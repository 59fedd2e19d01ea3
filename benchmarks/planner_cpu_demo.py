"""The planner's `cpu` entry against real 2-rank gloo runs of the demo (examples/demo.yaml).

    python benchmarks/planner_cpu_demo.py --data-dir DIR [--steps 40] [--repeats 2]

DIR holds `demo_data/` (`megacrystal demo --skip-train` builds it). Each case is a real
`torchrun --standalone --nproc-per-node 2 -m megacrystal.train` run (2 ranks on this machine, one
thread each); its step time is the median `step_time_s` of metrics.jsonl after the first steps. The
prediction is `megacrystal plan` of the same config and layout on the `cpu` hardware entry. The load
average before and after each run is recorded with it (other work on the machine shows there).
Because this machine is shared, each case also runs twice more for the CPU time of its two ranks
(getrusage of the children) at two lengths: the difference over the extra steps, per rank, is the
step's CPU time, which other load does not inflate the way it inflates wall time; on an idle box a
balanced layout's (dp2, tp2) step takes about that plus its collectives' waits. Results go to
benchmarks/results/planner-cpu-demo-*.json."""

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

from megacrystal.config import load_config  # noqa: E402
from megacrystal.planner import hardware  # noqa: E402
from megacrystal.planner.search import plan_one  # noqa: E402
from megacrystal.planner.shapes import Layout  # noqa: E402

CASES = {
    "dp2": [],
    "tp2": ["parallel.tp=2"],
    "pp2": ["parallel.pp=2"],
}
COMMON = ["train.eval_interval=0", "train.log_interval=1", "train.save_interval=0", "log.tensorboard=false"]


def measure(data_dir: Path, overrides: list[str], steps: int, skip: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
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


def cpu_seconds(data_dir: Path, overrides: list[str], steps: int) -> float:
    """User + system CPU seconds of a whole run (torchrun and both ranks)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    measure(data_dir, overrides, steps, 0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def predict(overrides: list[str]) -> tuple[float, str]:
    cfg = load_config(str(ROOT / "examples" / "demo.yaml"), overrides, validate=False)
    par = cfg.parallel
    dp = 2 // (par.tp * par.pp)
    lay = Layout(
        par.tp, par.pp, par.vpp, dp, par.sequence_parallel, par.distributed_optimizer, cfg.train.micro_batch_size
    )
    p = plan_one(cfg, lay, hardware.get("cpu"))
    return p.step_s, lay.label()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="directory holding demo_data/ (megacrystal demo --skip-train)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=5, help="first steps left out of the median")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES))
    a = ap.parse_args(argv)
    results = []
    for name in a.cases.split(","):
        pred, label = predict(CASES[name])
        for i in range(a.repeats):
            m = measure(Path(a.data_dir), CASES[name], a.steps, a.skip)
            err = (pred - m["step_s"]) / m["step_s"]
            short = cpu_seconds(Path(a.data_dir), CASES[name], a.skip)
            long_ = cpu_seconds(Path(a.data_dir), CASES[name], a.steps)
            cpu_step = (long_ - short) / (a.steps - a.skip) / 2
            err_cpu = (pred - cpu_step) / cpu_step
            results.append(
                dict(
                    case=name,
                    layout=label,
                    repeat=i,
                    predicted_s=pred,
                    error=err,
                    cpu_s_per_rank_step=cpu_step,
                    error_vs_cpu=err_cpu,
                    **m,
                )
            )
            print(
                f"{name:<4} {label:<32} wall {m['step_s'] * 1e3:6.1f} ms  cpu/rank {cpu_step * 1e3:6.1f} ms  "
                f"predicted {pred * 1e3:6.1f} ms  error vs wall {err:+.1%}, vs cpu {err_cpu:+.1%}  "
                f"load {m['load_before'][0]:.1f} -> {m['load_after'][0]:.1f}"
            )
    rec = dict(
        machine=dict(
            host=platform.node(),
            cores=os.cpu_count(),
            python=sys.version.split()[0],
            date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        ),
        hardware_entry=hardware.TABLE["cpu"],
        results=results,
    )
    out = ROOT / "benchmarks" / "results" / f"planner-cpu-demo-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(rec, indent=1, default=str))
    print(f"recorded {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
