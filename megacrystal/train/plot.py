"""`megacrystal plot --run DIR`: a run's metrics.jsonl (loss, LR, grad norm, throughput) against the
step, phase boundaries marked, as RUN/metrics.png and RUN/metrics.svg (drawn by megacrystal.plotting)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

PANELS = [("loss", "loss"), ("lr", "learning rate"), ("grad_norm", "grad norm"), ("tokens_per_s", "tokens/s")]


def read_metrics(run_dir: str) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl in this run directory")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{i}: not a JSON object") from None
    return rows


def phase_starts(rows: list[dict]) -> list[tuple[int, str]]:
    """(step, phase) of every logged step whose phase differs from the previous row's."""
    out, prev = [], None
    for r in rows:
        if prev is not None and r.get("phase") != prev:
            out.append((r["step"], str(r.get("phase"))))
        prev = r.get("phase")
    return out


def plot_run(run_dir: str, output: str | None = None) -> list[str]:
    """Draw the run's metrics; `output` is the path without its suffix (default RUN/metrics); -> the files."""
    from ..plotting import Line, Mark, Panel, draw

    rows = read_metrics(run_dir)
    marks = [Mark(step, phase) for step, phase in phase_starts(rows)]
    panels = []
    for key, title in PANELS:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
        lines = [Line("run", [p[0] for p in pts], [p[1] for p in pts])] if pts else []
        panels.append(Panel(title, "step", title, lines, marks))
    stem = Path(output) if output else Path(run_dir) / "metrics"
    if stem.suffix in (".png", ".svg"):
        stem = stem.with_suffix("")
    return draw(panels, stem, f"{Path(run_dir).resolve().name}: training metrics (dashed: phase starts)", cols=2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal plot", description=__doc__)
    ap.add_argument("--run", required=True, help="a train.out_dir holding metrics.jsonl")
    ap.add_argument("--output", help="path without suffix for the .png and .svg (default RUN/metrics)")
    a = ap.parse_args(argv)
    try:
        for p in plot_run(a.run, a.output):
            print(f"wrote {p}")
    except (FileNotFoundError, ValueError) as e:
        print(f"megacrystal plot: {e}", file=sys.stderr)
        return 2
    return 0
