"""The planner against published and recorded throughput: the table of docs/planner.md.

    python benchmarks/planner_validation.py            # print the table
    python benchmarks/planner_validation.py --write    # rewrite docs/planner.md's table section
    python benchmarks/planner_validation.py --calibrate  # fit the A100 efficiencies on the named rows

Rows come from benchmarks/planner_validation.json (fixed before any comparison; each names its source
and the features its system used). Each row is predicted with `megacrystal.planner.compose` on the
row's model, layout and features and the hardware table's entry for its GPU; the prediction is turned
into the published metric (TFLOP/s per GPU through Narayanan et al.'s Eq. 3, or seconds per step).
tests/test_planner_validation.py checks that docs/planner.md holds exactly what `render()` prints."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megacrystal.config import ModelConfig  # noqa: E402
from megacrystal.planner import hardware  # noqa: E402
from megacrystal.planner.compose import compose  # noqa: E402
from megacrystal.planner.shapes import Features, Layout, ModelShape  # noqa: E402

DATA = ROOT / "benchmarks" / "planner_validation.json"
DOC = ROOT / "docs" / "planner.md"
BEGIN, END = (
    "<!-- validation table: begin (benchmarks/planner_validation.py --write) -->",
    "<!-- validation table: end -->",
)


def rows() -> list[dict]:
    return json.loads(DATA.read_text())["rows"]


def model_of(row: dict) -> ModelShape:
    if "config" in row:
        return ModelShape.from_config(ModelConfig(family="crystal", **row["config"]))
    return ModelShape(**row["model"])


def narayanan_flops(m: ModelShape, batch: int, seq: int) -> float:
    """Eq. 3 of Narayanan et al.: 96 B s l h^2 (1 + s/(6h) + V/(16 l h)), recompute included."""
    h, L = m.hidden, m.layers
    return 96 * batch * seq * L * h * h * (1 + seq / (6 * h) + m.vocab / (16 * L * h))


def predict(row: dict, hw=None) -> dict:
    m = model_of(row)
    lay = Layout(**row["layout"])
    feat = Features(**row.get("features", {}))
    hw = hw or hardware.get(row["gpu"])
    plan = compose(m, lay, feat, hw, row["seq"], row["global_batch"])
    pub = row["published"]
    if pub["metric"] == "tflops_per_gpu":
        pred = narayanan_flops(m, row["global_batch"], row["seq"]) / (plan.step_s * lay.gpus) / 1e12
    else:
        pred = plan.step_s
    return dict(
        id=row["id"], published=pub["value"], predicted=pred, error=(pred - pub["value"]) / pub["value"], plan=plan
    )


def summary(results: list[dict], data: list[dict]) -> list[tuple[str, int, float, float]]:
    groups = {
        "A100, held out": [
            r for r, d in zip(results, data, strict=True) if d["gpu"] == "a100" and not d["calibration"]
        ],
        "A100, calibration": [r for r, d in zip(results, data, strict=True) if d["calibration"]],
        "H200 records (held out)": [r for r, d in zip(results, data, strict=True) if d["gpu"] == "h200"],
    }
    out = []
    for name, rs in groups.items():
        errs = [abs(r["error"]) for r in rs]
        out.append((name, len(rs), statistics.median(errs) if errs else 0.0, max(errs) if errs else 0.0))
    return out


def render() -> str:
    data = rows()
    results = [predict(d) for d in data]
    unit = {"tflops_per_gpu": "TFLOP/s/GPU", "iteration_s": "s/iteration", "step_s": "s/step"}
    lines = [
        "| row | published | predicted | error | fit | layout (tp.pp.vpp.dp.mbs) | features the system used |",
        "|---|---|---|---|---|---|---|",
    ]
    for d, r in zip(data, results, strict=True):
        lay = d["layout"]
        lt = f"{lay['tp']}.{lay['pp']}.{lay['vpp']}.{lay['dp']}.{lay['mbs']}"
        u = unit[d["published"]["metric"]]
        lines.append(
            f"| {d['id']} | {d['published']['value']:g} {u} | {r['predicted']:.3g} | {r['error']:+.1%} | "
            f"{'calibration' if d['calibration'] else 'held out'} | {lt} | {d['used']} |"
        )
    lines += ["", "| rows | n | median abs error | max abs error |", "|---|---|---|---|"]
    for name, n, med, mx in summary(results, data):
        lines.append(f"| {name} | {n} | {med:.1%} | {mx:.1%} |")
    return "\n".join(lines) + "\n"


def write_doc(table: str) -> None:
    text = DOC.read_text()
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:a] + "\n" + table + text[b:])


def doc_table() -> str:
    text = DOC.read_text()
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].lstrip("\n")


def calibrate() -> None:
    """Grid search of the A100's GEMM and memory-bound efficiencies on the calibration rows only."""
    data = [d for d in rows() if d["calibration"]]
    base = hardware.get("a100")
    best = None
    for g in [x / 100 for x in range(60, 96, 1)]:
        for mem in [x / 100 for x in range(50, 96, 5)]:
            hw = replace(base, gemm_eff=g, mem_eff=mem)
            errs = [abs(predict(d, hw)["error"]) for d in data]
            key = (statistics.median(errs), max(errs))
            if best is None or key < best[0]:
                best = (key, g, mem)
    (med, mx), g, mem = best
    print(
        f"a100: gemm_efficiency {g:.2f}, memory_efficiency {mem:.2f}: calibration rows median |error| {med:.1%}, max {mx:.1%}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite the table section of docs/planner.md")
    ap.add_argument("--calibrate", action="store_true", help="fit the A100 efficiencies on the calibration rows")
    a = ap.parse_args(argv)
    if a.calibrate:
        calibrate()
        return 0
    table = render()
    print(table)
    if a.write:
        write_doc(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
