"""The rehearsal's record as a table per played rank, the findings and the verdict."""

from __future__ import annotations

from .gpus import GiB
from .memory import ROLES
from .overlaps import text as overlap_text

_SHORT = dict(
    weights="weights", grads="grads", optimizer="optim", activations="activ", communication="comm", temporaries="temp"
)


def _gib(n: int) -> str:
    return f"{n / GiB:6.2f}"


def table(rec: dict) -> str:
    lay = rec.get("layout", {})
    mb = rec.get("micro_batches", {})
    lines = [
        f"rehearsal of {rec.get('config')} on {rec['world']} x {rec['gpu']['name']} "
        f"(tp {lay.get('tp')} cp {lay.get('cp', 1)} pp {lay.get('pp')} vpp {lay.get('vpp')} dp {lay.get('dp')}"
        f"{' +sp' if lay.get('sequence_parallel') else ''}{' +zero1' if lay.get('distributed_optimizer') else ''})",
        f"played {len(rec.get('ranks', []))} of {rec['world']} ranks {rec.get('played', {}).get('axes')}; "
        f"{rec.get('steps')} step(s) of {mb.get('rehearsed')} micro-batches (configured {mb.get('configured')})",
    ]
    lines += [f"  note: {n}" for n in rec.get("substitutions", {}).get("notes", [])]
    if rec.get("ranks"):
        head = f"{'rank':>5} {'coords':<18} {'peak GiB':>8} {'at':<10} " + " ".join(f"{_SHORT[r]:>7}" for r in ROLES)
        head += f" {'TFLOP/step':>10} {'comm GiB/step':>13}"
        lines += ["", head]
        for r in rec["ranks"]:
            m = r["memory"]
            coords = " ".join(f"{k}{v}" for k, v in r["coords"].items())
            step = r["steps"][-1] if r["steps"] else None
            tflop = sum(step["flops"].values()) / 1e12 if step else 0.0
            comm = (
                (sum(c["bytes"] * c["count"] for c in step["collectives"]) + step["p2p"]["send_bytes"]) if step else 0
            )
            lines.append(
                f"{r['rank']:>5} {coords:<18} {m['peak_bytes'] / GiB:>8.2f} {m['peak_section']:<10} "
                + " ".join(f"{m['peak_breakdown'].get(k, 0) / GiB:>7.2f}" for k in ROLES)
                + f" {tflop:>10.1f} {comm / GiB:>13.3f}"
            )
        lines.append(
            f"GPU: {rec['gpu']['name']}, {rec['gpu']['capacity_bytes'] / GiB:.1f} GiB, "
            f"{rec['gpu']['usable_bytes'] / GiB:.1f} GiB usable (CUDA context, NCCL buffers, fragmentation)"
        )
        first = rec["ranks"][0]
        rows = first.get("overlaps") or []
        if rows:
            lines += [""] + overlap_text(rows, first["rank"], rec["gpu"]["name"])
    lines.append("")
    if rec["lines"]:
        lines += [f"FINDING {x}" for x in rec["lines"]]
    t = rec.get("timing", {})
    verdict = "PASS" if rec["verdict"] == "pass" else f"FAIL ({len(rec['lines'])} finding(s))"
    lines.append(
        f"verdict: {verdict}"
        + (f"  [{t.get('seconds')} s, {t.get('jobs')} job(s), load {t.get('load_average')}]" if t else "")
    )
    return "\n".join(lines)
