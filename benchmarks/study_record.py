"""Record a finished `megacrystal study` run: its wall time, load, per-run times and the comparison.

    python benchmarks/study_record.py runs/study [--commit SHA]

Writes benchmarks/results/study-<start time>.json (never over an existing record): machine (CPU model, cores, memory, versions, date), the
study's study.json (wall time, parallel jobs, load average at start and end, seconds per run), the
compare summary (per-source final losses, FIM/completion scores, tokens per source, mean/std/min/max
over seeds), the trajectory (compare/trajectory.json: every evaluated checkpoint of each run, the means
per variant and the values at each phase end) when the study drew one, and the code commit it ran with.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parallel_bench_util import machine


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study_dir")
    ap.add_argument("--commit", help="the code commit the study ran with")
    a = ap.parse_args()
    d = Path(a.study_dir)
    study = json.loads((d / "study.json").read_text())
    summary = json.loads((d / "compare" / "compare.json").read_text())
    info = dict(machine(), cpu_model=cpu_model())
    out = {"machine": info, "commit": a.commit, "study": study, "compare": summary}
    trajectory = d / "compare" / "trajectory.json"
    if trajectory.is_file():
        out["trajectory"] = json.loads(trajectory.read_text())
    start = study.get("started", "").replace(" UTC", "").replace(" ", "T").replace(":", "")
    stamp = start[:15] or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%S")
    path = Path(__file__).resolve().parent / "results" / f"study-{stamp}.json"
    if path.exists():  # a record is never overwritten
        raise SystemExit(f"{path}: exists already (this study was recorded)")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wall {study['wall_s'] / 60:.1f} min with {study['parallel_jobs']} parallel runs on {info['cores']} cores")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
