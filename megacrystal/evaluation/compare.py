"""`megacrystal compare RUN_OR_EVAL... --output DIR`: several runs (or their eval reports) side by side.

    megacrystal compare runs/study/crystal/seed1 runs/study/crystal/seed2 runs/study/mixed/seed1 ... --output cmp/

Each input is a run directory (metrics.jsonl, config.yaml, and the newest eval/step_*.json when there
is one: results.py) or an eval JSON. Runs named `seedN` are grouped under their parent directory's name (mean and
spread over the seeds); other runs are their own group. Inputs measured with different tokenizers or on
different validation sets are refused: their losses are not comparable.

Final per-source losses come from the eval report (all held-out samples) or, without one, from the last
validation in metrics.jsonl (train.eval_iters batches); the "loss from" column says which.

Writes DIR/compare.json, DIR/compare.md (the table printed on the console) and DIR/valid_loss.png/svg
(per-source validation loss vs tokens, one panel per source, phase boundaries marked). With
--trajectory also DIR/trajectory.* (every evaluated checkpoint of each run: trajectory.py).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic_io import atomic_write
from ..plotting import FORMATS
from .report import read_report, write_json

SEED_DIR = re.compile(r"^seed[-_]?\d+$")


class CompareError(ValueError):
    """Inputs that cannot be compared; the message names them."""


@dataclass
class RunRecord:
    path: str
    label: str
    run_dir: Path | None
    report: dict | None
    rows: list = field(default_factory=list)
    config: dict | None = None
    tokenizer: str | None = None
    validation: str | None = None

    @property
    def seq_length(self) -> int | None:
        if self.report:
            return self.report["validation"]["seq_length"]
        return (self.config or {}).get("data", {}).get("seq_length")

    def final_losses(self) -> dict:
        if self.report and self.report.get("losses"):
            return {k: v["loss"] for k, v in self.report["losses"].items()}
        for r in reversed(self.rows):
            if isinstance(r.get("valid_loss"), dict):
                return dict(r["valid_loss"])
        return {}

    def tokens_per_source(self) -> dict:
        seq = self.seq_length
        for r in reversed(self.rows):
            if isinstance(r.get("samples_per_source"), dict) and seq:
                return {k: int(v) * seq for k, v in r["samples_per_source"].items()}
        return {}

    def phase_ends(self) -> list[tuple[str, int, int]]:
        """(phase, last step, tokens seen at it) of every phase: from the run's config (phases in steps),
        else from metrics.jsonl (the last logged step of each phase)."""
        cfg = self.config or {}
        phases = (cfg.get("data") or {}).get("phases") or []
        seq, gbs = (cfg.get("data") or {}).get("seq_length"), (cfg.get("train") or {}).get("global_batch_size")
        if phases and seq and gbs and all(p.get("steps") for p in phases):
            out, steps = [], 0
            for p in phases:
                steps += p["steps"]
                out.append((str(p.get("name")), steps, steps * gbs * seq))
            return out
        ends: dict[str, tuple[int, int]] = {}
        for r in self.rows:
            if "step" in r:
                ends[str(r.get("phase"))] = (r["step"], r.get("tokens", 0))
        return [(name, s, t) for name, (s, t) in ends.items()]

    def scores(self) -> dict:
        out = {}
        rep = self.report or {}
        for mode in ("psm", "spm"):
            v = (rep.get("fim") or {}).get(mode) or {}
            out[f"fim_{mode}_exact_match"] = v.get("exact_match")
            out[f"fim_{mode}_edit_similarity"] = v.get("edit_similarity")
        c = rep.get("completion") or {}
        out["completion_exact_match"] = c.get("exact_match")
        out["completion_edit_similarity"] = c.get("edit_similarity")
        return out


def _label(run_dir: Path) -> str:
    return run_dir.parent.name if SEED_DIR.match(run_dir.name) else run_dir.name


def _newest_report(run_dir: Path) -> dict | None:
    """The report of the newest evaluated checkpoint (of several settings: the one written last)."""
    from .results import run_reports

    reps = [(step, p.stat().st_mtime_ns, p) for by_step in run_reports(run_dir).values() for step, p in by_step.items()]
    return read_report(max(reps)[2]) if reps else None


def _read_rows(run_dir: Path) -> list:
    from ..train.plot import read_metrics

    return read_metrics(str(run_dir)) if (run_dir / "metrics.jsonl").is_file() else []


def load_record(path: str) -> RunRecord:
    p = Path(path)
    if p.is_file():
        rep = read_report(p)
        run_dir = Path(rep["model"]["run_dir"]) if rep["model"].get("run_dir") else None
        if run_dir is not None and not run_dir.is_dir():
            run_dir = None
        label = _label(run_dir) if run_dir else p.stem
    elif p.is_dir():
        run_dir, rep = p, _newest_report(p)
        if rep is None and not (p / "metrics.jsonl").is_file():
            raise CompareError(f"{p}: neither a run directory (metrics.jsonl) nor holding eval/step_*.json")
        label = _label(p)
    else:
        raise CompareError(f"{p}: no such run directory or eval JSON")
    rec = RunRecord(str(p), label, run_dir, rep)
    if run_dir is not None:
        rec.rows = _read_rows(run_dir)
        cfg_file = run_dir / "config.yaml"
        if cfg_file.is_file():
            import yaml

            rec.config = yaml.safe_load(cfg_file.read_text())
    _fingerprints(rec)
    return rec


def _fingerprints(rec: RunRecord) -> None:
    """The tokenizer and validation-set identities: from the eval report, else from the run's config."""
    if rec.report is not None:
        rec.tokenizer = rec.report["tokenizer"]["fingerprint"]
        rec.validation = rec.report["validation"]["fingerprint"]
        return
    if rec.config is None:
        raise CompareError(
            f"{rec.path}: no eval report and no config.yaml to identify its tokenizer and validation set"
        )
    from ..config import ConfigError, from_dict
    from ..data.plan import make_plan
    from .validation_data import tokenizer_fingerprint, validation_fingerprint

    try:
        cfg = from_dict(rec.config, str(rec.run_dir / "config.yaml"))
        plan = make_plan(cfg)
    except (ConfigError, ValueError) as e:
        raise CompareError(f"{rec.path}: cannot rebuild its validation set ({e})") from None
    rec.tokenizer = tokenizer_fingerprint(cfg.data.tokenizer_model)
    files = [(s.name, f.prefix, f.valid_documents) for s in plan.sources.values() for f in s.files]
    rec.validation = validation_fingerprint(cfg.data.seq_length, files)


def check_comparable(records: list[RunRecord]) -> None:
    for what in ("tokenizer", "validation"):
        first = records[0]
        for r in records[1:]:
            if getattr(r, what) != getattr(first, what):
                noun = "tokenizers" if what == "tokenizer" else "validation sets"
                raise CompareError(
                    f"{r.path} and {first.path} use different {noun} ({getattr(r, what)} vs "
                    f"{getattr(first, what)}); their losses are not comparable"
                )


def _stats(values: list) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def summarize(records: list[RunRecord]) -> dict:
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.label, []).append(r)
    sources = sorted({s for r in records for s in r.final_losses()})
    out = {"sources": sources, "groups": {}}
    for label, rs in groups.items():
        kinds = sorted({"eval" if r.report and r.report.get("losses") else "training" for r in rs})
        g = {"runs": [r.path for r in rs], "loss_from": "+".join(kinds), "valid_loss": {}, "tokens": {}, "scores": {}}
        for s in sources:
            g["valid_loss"][s] = _stats([r.final_losses().get(s) for r in rs])
            g["tokens"][s] = _stats([r.tokens_per_source().get(s) for r in rs])
        for k in rs[0].scores():
            g["scores"][k] = _stats([r.scores()[k] for r in rs])
        out["groups"][label] = g
    return out


def _cell(st: dict | None, spec: str = ".3f") -> str:
    if st is None:
        return "-"
    return format(st["mean"], spec) + (f" ± {format(st['std'], spec)}" if st["n"] > 1 else "")


def render_table(summary: dict) -> str:
    srcs = summary["sources"]
    score_cols = [
        ("fim_psm_exact_match", "FIM PSM EM"),
        ("fim_spm_exact_match", "FIM SPM EM"),
        ("fim_psm_edit_similarity", "FIM PSM ES"),
        ("fim_spm_edit_similarity", "FIM SPM ES"),
        ("completion_exact_match", "next-line EM"),
        ("completion_edit_similarity", "next-line ES"),
    ]
    head = ["run", "seeds", "loss from", *[f"loss {s}" for s in srcs], *[t for _, t in score_cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, g in summary["groups"].items():
        cells = [label, str(len(g["runs"])), g["loss_from"]]
        cells += [_cell(g["valid_loss"][s]) for s in srcs]
        cells += [_cell(g["scores"].get(k)) for k, _ in score_cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Tokens seen per source (millions):", ""]
    head = ["run", *srcs]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, g in summary["groups"].items():
        cells = [label] + [
            "-" if g["tokens"][s] is None else f"{g['tokens'][s]['mean'] / 1e6:.3f}" for s in summary["sources"]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(paths: list[str], output: str, formats=FORMATS, with_trajectory: bool = False) -> dict:
    if not paths:
        raise CompareError("give at least one run directory or eval JSON")
    records = [load_record(p) for p in paths]
    check_comparable(records)
    summary = summarize(records)
    summary["tokenizer"], summary["validation"] = records[0].tokenizer, records[0].validation
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    table = render_table(summary)
    write_json(out / "compare.json", summary)
    atomic_write(out / "compare.md", table + "\n")
    summary["table"] = table
    summary["plots"] = []
    if any(r.rows for r in records) and formats:
        summary["plots"] = plot_curves(records, summary["sources"], out / "valid_loss", formats)
    if with_trajectory:
        from .trajectory import trajectory

        summary["trajectory"] = trajectory(records, out, formats)
    return summary


def _curve(rows: list, source: str) -> dict:
    return {
        r["tokens"]: r["valid_loss"][source]
        for r in rows
        if isinstance(r.get("valid_loss"), dict) and source in r["valid_loss"] and "tokens" in r
    }


def plot_curves(records: list[RunRecord], sources: list[str], stem: Path, formats=FORMATS) -> list[str]:
    """Per-source validation loss (metrics.jsonl) vs training tokens, one panel per source, one colour per
    group: the mean over its seeds, a band from the lowest to the highest seed, its phase ends dashed."""
    from ..plotting import Line, Mark, Panel, draw

    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        if r.rows:
            groups.setdefault(r.label, []).append(r)
    panels = []
    for src in sources:
        lines, marks = [], []
        for label, rs in groups.items():
            per_seed = [_curve(r.rows, src) for r in rs]
            xs = sorted(set.intersection(*(set(c) for c in per_seed)))
            if not xs:
                continue
            vals = [[c[x] for c in per_seed] for x in xs]
            band = len(rs) > 1
            lines.append(
                Line(
                    f"{label} (n={len(rs)})",
                    [x / 1e6 for x in xs],
                    [statistics.fmean(v) for v in vals],
                    [min(v) for v in vals] if band else None,
                    [max(v) for v in vals] if band else None,
                )
            )
            marks += [Mark(t / 1e6, of=lines[-1].label) for _, _, t in rs[0].phase_ends()[:-1]]
        panels.append(Panel(src, "training tokens (M)", "validation loss", lines, marks))
    title = "validation loss per source (mean over seeds, band: min-max; dashed: phase boundaries)"
    return draw(panels, stem, title, formats)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", metavar="RUN_OR_EVAL", help="run directories or eval JSON reports")
    ap.add_argument("--output", required=True, help="directory for compare.json, compare.md and the plot")
    ap.add_argument("--format", default="png,svg", help="plot formats, comma-separated ('': no plot)")
    ap.add_argument(
        "--trajectory",
        action="store_true",
        help="also every evaluated checkpoint of each run vs tokens seen: DIR/trajectory.{png,svg,md,csv,json}",
    )
    a = ap.parse_args(argv)
    try:
        s = compare(a.inputs, a.output, tuple(f for f in a.format.split(",") if f), a.trajectory)
    except (CompareError, ValueError, FileNotFoundError) as e:
        print(f"megacrystal compare: {e}", file=sys.stderr)
        return 2
    print(s["table"])
    if "trajectory" in s:
        print(f"\nAt each phase end (eval settings {s['trajectory']['settings']['eval']}):\n")
        print(s["trajectory"]["table"])
        s["plots"] += s["trajectory"]["files"]
    for p in s["plots"]:
        print(f"wrote {p}")
    print(f"wrote {Path(a.output) / 'compare.md'}, {Path(a.output) / 'compare.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
