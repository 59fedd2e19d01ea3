"""`megacrystal compare RUN [RUN ...] --output DIR --trajectory`: a run's abilities against tokens seen.

Each run's evaluated checkpoints (`megacrystal eval --checkpoint RUN --all`, RUN/eval/step_N-<fp>.json,
and lm-eval results RUN/eval/lm_eval-step_N-<fp>.json where present) become one point per checkpoint:
per-source loss, FIM (PSM, SPM) and next-line completion exact match and edit similarity, harness
metrics. Where a run holds results under several settings, the settings that scored the most
checkpoints are used (the newest on a tie); runs compared must share them, and their tokenizer and
held-out set, or the command stops naming the two runs. Runs named `seedN` are one group (mean; the band
runs from the lowest to the highest seed, over the steps every seed has).

Writes DIR/trajectory.png and .svg (one panel per metric, groups overlaid, each group's phase ends
dashed), DIR/trajectory.md (the values at each phase end: the last evaluated checkpoint at or before
it), DIR/trajectory.csv (the same, one row per group, phase and metric) and DIR/trajectory.json (every point).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from ..atomic_io import atomic_write
from .compare import CompareError, RunRecord
from .report import read_report, write_json
from .results import run_harness_results, run_reports

SCORES = [
    ("fim", "psm", "FIM PSM"),
    ("fim", "spm", "FIM SPM"),
    ("completion", None, "next-line"),
]


def _choose(groups: dict) -> tuple[str | None, dict]:
    """The settings (fingerprint) that scored the most checkpoints; the newest file breaks a tie."""
    if not groups:
        return None, {}
    fp = max(groups, key=lambda k: (len(groups[k]), max(p.stat().st_mtime_ns for p in groups[k].values())))
    return fp, groups[fp]


def _report_values(rep: dict) -> dict:
    out = {f"loss {s}": v["loss"] for s, v in (rep.get("losses") or {}).items()}
    for key, mode, name in SCORES:
        block = (rep.get(key) or {}).get(mode) if mode else rep.get(key)
        for metric, label in (("exact_match", "exact match"), ("edit_similarity", "edit similarity")):
            if block and block.get(metric) is not None:
                out[f"{name} {label}"] = block[metric]
    return out


def _harness_values(path: Path) -> dict:
    try:
        results = json.loads(path.read_text()).get("results", {})
    except (OSError, json.JSONDecodeError) as e:
        raise CompareError(f"{path}: not a readable lm-eval results JSON ({e})") from None
    out = {}
    for task, metrics in sorted(results.items()):
        for key, value in metrics.items():
            if "," in key and "_stderr" not in key and isinstance(value, int | float):
                metric, _, filt = key.partition(",")
                out[f"{task} {metric}" + ("" if filt in ("", "none") else f" ({filt})")] = value
    return out


def run_points(rec: RunRecord) -> dict:
    """{"settings", "harness_settings", "tokenizer", "validation", "points": {step: {"tokens", "values"}}}."""
    if rec.run_dir is None:
        raise CompareError(f"{rec.path}: --trajectory needs run directories (this is one eval JSON)")
    fp, reports = _choose(run_reports(rec.run_dir))
    hfp, harness = _choose(run_harness_results(rec.run_dir))
    if not reports and not harness:
        raise CompareError(
            f"{rec.run_dir}: no evaluated checkpoint (megacrystal eval --checkpoint {rec.run_dir} --all)"
        )
    cfg = rec.config or {}
    per_step = (cfg.get("data") or {}).get("seq_length", 0) * (cfg.get("train") or {}).get("global_batch_size", 0)
    out = {"settings": fp, "harness_settings": hfp, "tokenizer": None, "validation": None, "points": {}}
    for step, path in sorted(reports.items()):
        rep = read_report(path)
        for what in ("tokenizer", "validation"):
            have = rep[what]["fingerprint"]
            if out[what] not in (None, have):
                raise CompareError(f"{path}: another {what} than the run's other evaluations ({have})")
            out[what] = have
        tokens = rep["model"].get("tokens") or step * per_step
        out["points"][step] = {"tokens": tokens, "values": _report_values(rep)}
    for step, path in sorted(harness.items()):
        point = out["points"].setdefault(step, {"tokens": step * per_step, "values": {}})
        point["values"].update(_harness_values(path))
    return out


def _check_same(records: list[RunRecord], runs: list[dict]) -> None:
    first, f0 = records[0], runs[0]
    for rec, r in zip(records[1:], runs[1:], strict=True):
        nouns = {"settings": "eval settings", "harness_settings": "harness settings"}
        nouns |= {"tokenizer": "tokenizers", "validation": "held-out sets"}
        for key, noun in nouns.items():
            if r[key] != f0[key] and r[key] is not None and f0[key] is not None:
                raise CompareError(
                    f"{rec.path} and {first.path} were evaluated with different {noun} ({r[key]} vs {f0[key]}); "
                    "their trajectories are not comparable"
                )


def _stats(vals: list) -> dict:
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def group_series(runs: list[dict]) -> dict:
    """{step: {"tokens", metric: stats}} over the steps every run of the group has."""
    steps = sorted(set.intersection(*(set(r["points"]) for r in runs)))
    out = {}
    for s in steps:
        pts = [r["points"][s] for r in runs]
        row = {"tokens": statistics.fmean(p["tokens"] for p in pts)}
        for m in sorted(set.intersection(*(set(p["values"]) for p in pts))):
            row[m] = _stats([p["values"][m] for p in pts])
        out[s] = row
    return out


def phase_end_rows(label: str, rec: RunRecord, series: dict) -> list[dict]:
    rows = []
    for phase, end_step, _ in rec.phase_ends():
        at = [s for s in series if s <= end_step]
        if at:
            rows.append({"group": label, "phase": phase, "phase_end_step": end_step, "step": at[-1], **series[at[-1]]})
    return rows


def _metrics(series_by_group: dict) -> list[str]:
    seen = {m for ser in series_by_group.values() for row in ser.values() for m in row if m != "tokens"}
    return sorted(seen, key=lambda m: (not m.startswith("loss "), m))


def render_markdown(rows: list[dict], metrics: list[str]) -> str:
    head = ["run", "phase", "phase end", "checkpoint", "tokens (M)", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["group"], r["phase"], str(r["phase_end_step"]), str(r["step"]), f"{r['tokens'] / 1e6:.3f}"]
        for m in metrics:
            st = r.get(m)
            cells.append("-" if st is None else f"{st['mean']:.3f}" + (f" ± {st['std']:.3f}" if st["n"] > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_csv(rows: list[dict], metrics: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "phase", "phase_end_step", "step", "tokens", "metric", "mean", "std", "min", "max", "n"])
    for r in rows:
        for m in metrics:
            if r.get(m) is not None:
                st = r[m]
                head = [r["group"], r["phase"], r["phase_end_step"], r["step"], round(r["tokens"]), m]
                w.writerow(head + [st[k] for k in ("mean", "std", "min", "max", "n")])
    return buf.getvalue()


def _panels(series_by_group: dict, first: dict, metrics: list[str], n_runs: dict) -> list:
    from ..plotting import Line, Mark, Panel

    panels = []
    for m in metrics:
        lines, marks = [], []
        for label, ser in series_by_group.items():
            steps = [s for s in ser if m in ser[s]]
            if not steps:
                continue
            st = [ser[s][m] for s in steps]
            band = n_runs[label] > 1
            name = f"{label} (n={n_runs[label]})"
            xs = [ser[s]["tokens"] / 1e6 for s in steps]
            lo, hi = ([x["min"] for x in st], [x["max"] for x in st]) if band else (None, None)
            lines.append(Line(name, xs, [x["mean"] for x in st], lo, hi))
            marks += [Mark(t / 1e6, of=name) for _, _, t in first[label].phase_ends()[:-1]]
        ylabel = "loss" if m.startswith("loss") else "score"
        panels.append(Panel(m, "training tokens (M)", ylabel, lines, marks))
    return panels


def trajectory(records: list[RunRecord], output, formats=("png", "svg")) -> dict:
    """Write DIR/trajectory.{png,svg,md,csv,json}; -> {"table", "files", "settings"}."""
    from ..plotting import draw

    runs = [run_points(r) for r in records]
    _check_same(records, runs)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.label, []).append(i)
    series = {label: group_series([runs[i] for i in idx]) for label, idx in groups.items()}
    first = {label: records[idx[0]] for label, idx in groups.items()}
    metrics = _metrics(series)
    rows = [row for label in groups for row in phase_end_rows(label, first[label], series[label])]
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    table = render_markdown(rows, metrics)
    atomic_write(out / "trajectory.md", table + "\n")
    atomic_write(out / "trajectory.csv", render_csv(rows, metrics))
    settings = {"eval": runs[0]["settings"], "harness": runs[0]["harness_settings"]}
    doc = {
        "settings": settings,
        "runs": {r.path: {str(s): p for s, p in x["points"].items()} for r, x in zip(records, runs, strict=True)},
        "groups": {label: {str(s): v for s, v in ser.items()} for label, ser in series.items()},
        "phase_ends": rows,
    }
    write_json(out / "trajectory.json", doc)
    files = [str(out / n) for n in ("trajectory.md", "trajectory.csv", "trajectory.json")]
    if formats:
        n_runs = {label: len(idx) for label, idx in groups.items()}
        title = "every evaluated checkpoint vs training tokens (mean over seeds, band: min-max; dashed: phase ends)"
        files += draw(_panels(series, first, metrics, n_runs), out / "trajectory", title, formats, cols=4)
    return {"table": table, "files": files, "settings": settings}
