"""Context parallelism as `megacrystal rehearse` sees it: the issue-22 proofs, recorded.

    python benchmarks/cp_rehearsal.py [--jobs 2]

1. An 8B-shaped LLaMA (examples/llama_long.yaml) at 128k tokens, tp8 + sequence parallel, no
   recomputation, micro-batch 1, dp2, ZeRO-1, on H100 80GB: cp1, cp2, cp4: peak memory per rank by
   kind, whether it fits, activations per rank;
2. examples/llama_long.yaml as written (32k, tp4 cp2 dp2) on --gpus 16;
3. activations per rank at a fixed small layout (tp1 pp1 dp1, seq 1024) for cp1/cp2/cp4.
Each rehearsal runs the package's own API (one step); the figures, the wall time, the load average and
the versions go to benchmarks/results/cp-rehearsal-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
GiB = 2**30
LONG = "examples/llama_long.yaml"
AT_128K = ["data.seq_length=131072", "model.max_seq_len=131072", "parallel.tp=8", "parallel.sequence_parallel=true"]
AT_128K += ["train.micro_batch_size=1", "model.recompute=false", "train.eval_interval=0"]
SMALL = ["model.preset=tiny", "model.family=llama", "data.seq_length=1024", "model.max_seq_len=1024"]
SMALL += ["parallel.tp=1", "parallel.sequence_parallel=false", "train.micro_batch_size=1"]
SMALL += ["train.global_batch_size=2", "train.eval_interval=0"]


def summary(rec: dict) -> dict:
    worst = max(rec["ranks"], key=lambda r: r["memory"]["peak_bytes"]) if rec["ranks"] else None
    out = dict(
        world=rec["world"],
        overrides=rec["overrides"],
        layout=rec.get("layout"),
        verdict=rec["verdict"],
        findings=rec["lines"],
        played_ranks=len(rec["ranks"]),
        usable_gib=rec["gpu"]["usable_bytes"] / GiB,
        seconds=rec["timing"]["seconds"] if "timing" in rec else None,
        load_average=rec["timing"]["load_average"] if "timing" in rec else None,
    )
    if worst:
        m = worst["memory"]
        out.update(
            peak_gib=m["peak_bytes"] / GiB,
            peak_breakdown_gib={k: v / GiB for k, v in m["peak_breakdown"].items()},
            activations_gib=m["peak_activations"] / GiB,
            fits=m["peak_bytes"] <= rec["gpu"]["usable_bytes"],
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    from megacrystal.rehearsal import rehearse

    work = None  # the rehearsal's per-user work directory (stand-in data, index caches)
    res: dict = dict(at_128k={}, llama_long_16={}, small_activations={})
    t0 = time.perf_counter()
    for cp in (1, 2, 4):
        rec = rehearse(LONG, 16 * cp, "h100", AT_128K + [f"parallel.cp={cp}"], steps=1, jobs=a.jobs, workdir=work)
        res["at_128k"][f"cp{cp}"] = summary(rec)
        print(f"128k cp{cp}: {res['at_128k'][f'cp{cp}']['peak_gib']:.1f} GiB, {rec['verdict']}", flush=True)
    rec = rehearse(LONG, 16, "h100", [], steps=1, jobs=a.jobs, workdir=work)
    res["llama_long_16"] = summary(rec)
    print(f"llama_long on 16: {rec['verdict']} {res['llama_long_16']['peak_gib']:.1f} GiB", flush=True)
    for cp in (1, 2, 4):
        rec = rehearse(
            "examples/crystal_7b.yaml", cp, "h100", SMALL + [f"parallel.cp={cp}"], steps=1, jobs=a.jobs, workdir=work
        )
        res["small_activations"][f"cp{cp}"] = rec["ranks"][0]["memory"]["peak_activations"]
    base = res["small_activations"]["cp1"]
    res["small_activations"]["ratio_to_cp1"] = {k: v / base for k, v in res["small_activations"].items() if k != "cp1"}
    print("activations/rank vs cp1:", res["small_activations"]["ratio_to_cp1"])
    import torch

    doc = dict(
        benchmark="benchmarks/cp_rehearsal.py",
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count()),
        versions=dict(python=platform.python_version(), torch=torch.__version__),
        seconds=round(time.perf_counter() - t0, 1),
        results=res,
    )
    out = os.path.join(ROOT, "benchmarks", "results", f"cp-rehearsal-{datetime.date.today().isoformat()}.json")
    with open(out + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(out + ".tmp", out)
    print("wrote", os.path.relpath(out, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
