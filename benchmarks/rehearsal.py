"""Time `megacrystal rehearse` of the 7B recipe on 256 H100 ranks (tp2 pp4 dp32 + sp + ZeRO-1) on this machine.

    python benchmarks/rehearsal.py [--jobs 2] [--steps 2]

Runs the command's own API in a fresh process (imports included), records the wall time, the CPU time
of the whole process tree, the load average before and after (the machine may be shared), the
verdict and each played rank's peak memory, in benchmarks/results/rehearsal-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = [
    "rehearse",
    "--config",
    "examples/crystal_7b.yaml",
    "--gpus",
    "256",
    "--gpu",
    "h100",
    "parallel.tp=2",
    "parallel.pp=4",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    out = os.path.join(ROOT, "benchmarks", "results", f"rehearsal-{datetime.date.today().isoformat()}.json")
    rec_path = out + ".record.tmp"
    argv = [sys.executable, "-m", "megacrystal.cli", *COMMAND, "--jobs", str(a.jobs), "--steps", str(a.steps)]
    argv += ["--json", rec_path]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(rec_path) as f:
        rec = json.load(f)
    os.remove(rec_path)
    import torch

    result = dict(
        command="megacrystal " + " ".join(COMMAND) + f" --jobs {a.jobs} --steps {a.steps}",
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count()),
        versions=dict(python=platform.python_version(), torch=torch.__version__),
        exit_status=proc.returncode,
        wall_s=round(wall, 1),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 1),
        load_average_before=list(load_before),
        load_average_after=list(os.getloadavg()),
        verdict=rec["verdict"],
        played=len(rec["ranks"]),
        micro_batches=rec["micro_batches"],
        peak_gib={str(r["rank"]): round(r["memory"]["peak_bytes"] / 2**30, 2) for r in rec["ranks"]},
        play_seconds={str(r["rank"]): r["seconds"] for r in rec["ranks"]},
    )
    print(json.dumps(result, indent=1))
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    return 0 if rec["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
