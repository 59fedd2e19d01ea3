"""`megacrystal plot --run DIR`: an SVG of a run's metrics.jsonl (loss, LR, grad norm, throughput),
phase boundaries marked. No plotting library needed."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

PANELS = [("loss", "loss"), ("lr", "learning rate"), ("grad_norm", "grad norm"), ("tokens_per_s", "tokens/s")]
W, H, PAD = 520, 220, 48


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


def _panel(rows, key, title, ox, oy) -> list[str]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    out = [
        f'<g transform="translate({ox},{oy})">',
        f'<rect x="{PAD}" y="10" width="{W - PAD - 10}" height="{H - PAD}" fill="none" stroke="#999"/>',
        f'<text x="{W / 2}" y="8" text-anchor="middle" font-size="12">{title}</text>',
    ]
    if pts:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
        fx = lambda x: PAD + (x - x0) / (x1 - x0) * (W - PAD - 10)
        fy = lambda y: 10 + (1 - (y - y0) / (y1 - y0)) * (H - PAD)
        prev = None
        for r in rows:  # phase boundaries
            if prev is not None and r.get("phase") != prev:
                out.append(
                    f'<line x1="{fx(r["step"]):.1f}" x2="{fx(r["step"]):.1f}" y1="10" y2="{H - PAD + 10}" '
                    f'stroke="#c33" stroke-dasharray="4 3"/><text x="{fx(r["step"]) + 3:.1f}" y="22" '
                    f'font-size="10" fill="#c33">{r.get("phase")}</text>'
                )
            prev = r.get("phase")
        path = " ".join(f"{'M' if i == 0 else 'L'}{fx(x):.1f},{fy(y):.1f}" for i, (x, y) in enumerate(pts))
        out.append(f'<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
        for v, y in ((y1, 14), (y0, H - PAD + 10)):
            out.append(f'<text x="{PAD - 4}" y="{y}" text-anchor="end" font-size="10">{v:.4g}</text>')
        out.append(f'<text x="{PAD}" y="{H - PAD + 24}" font-size="10">step {x0}</text>')
        out.append(f'<text x="{W - 10}" y="{H - PAD + 24}" text-anchor="end" font-size="10">{x1}</text>')
    out.append("</g>")
    return out


def plot_run(run_dir: str, output: str | None = None) -> str:
    rows = read_metrics(run_dir)
    out = Path(output or Path(run_dir) / "metrics.svg")
    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{2 * H}" font-family="sans-serif">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for i, (key, title) in enumerate(PANELS):
        body += _panel(rows, key, title, (i % 2) * W, (i // 2) * H)
    body.append("</svg>")
    out.write_text("\n".join(body))
    return str(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal plot", description=__doc__)
    ap.add_argument("--run", required=True, help="a train.out_dir holding metrics.jsonl")
    ap.add_argument("--output", help="SVG path (default RUN/metrics.svg)")
    a = ap.parse_args(argv)
    try:
        print(plot_run(a.run, a.output))
    except (FileNotFoundError, ValueError) as e:
        print(f"megacrystal plot: {e}", file=sys.stderr)
        return 2
    return 0
