"""The eval report: a JSON document (written atomically) and the console table.

JSON fields: format, model (origin: path, kind, checkpoint, step, run_dir; parameters), tokenizer
(path, fingerprint), validation (seq_length, fingerprint, sources), losses {source: {loss,
perplexity, tokens, samples}}, fim {psm|spm: {exact_match, edit_similarity, n}, examples},
completion {exact_match, edit_similarity, n, examples}, settings, elapsed_s.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic_io import atomic_write

FORMAT = "megacrystal-eval/1"


def write_json(path, obj: dict) -> Path:
    """Write `obj` as JSON atomically (its own temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(obj, indent=1) + "\n")
    return path


def read_report(path) -> dict:
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not a readable eval JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{p}: expected an eval report with format {FORMAT!r}")
    return obj


def _fmt(v, spec=".4f") -> str:
    return "-" if v is None else format(v, spec)


def render(report: dict) -> str:
    m = report["model"]
    lines = [f"eval of {m.get('checkpoint')} (step {m.get('step')}, {m.get('parameters', 0) / 1e6:.2f} M parameters)"]
    if report.get("losses"):
        lines.append(f"  {'source':<20}{'loss':>10}{'ppl':>12}{'tokens':>12}{'samples':>9}")
        for name, v in report["losses"].items():
            lines.append(
                f"  {name:<20}{_fmt(v['loss']):>10}{_fmt(v['perplexity'], '.2f'):>12}{v['tokens']:>12,}{v['samples']:>9}"
            )
    fim = report.get("fim")
    if fim:
        for mode in ("psm", "spm"):
            if mode in fim:
                v = fim[mode]
                lines.append(
                    f"  FIM {mode.upper()}: exact match {_fmt(v['exact_match'], '.3f')}, edit similarity "
                    f"{_fmt(v['edit_similarity'], '.3f')} over {v['n']} lines"
                )
    comp = report.get("completion")
    if comp:
        lines.append(
            f"  completion (next line): exact match {_fmt(comp['exact_match'], '.3f')}, edit similarity "
            f"{_fmt(comp['edit_similarity'], '.3f')} over {comp['n']} lines"
        )
    lines.append(f"  ({report.get('elapsed_s', 0):.1f} s)")
    return "\n".join(lines)
