"""The rehearsal's peak memory against `torch.cuda.max_memory_allocated` of the same single-GPU step (GPU only).

    python benchmarks/rehearsal_vs_cuda.py [--cases crystal-1b,crystal-7b-4l] [--gpu h200]

For each single-GPU throughput case of benchmarks/train_throughput.py: the real step on CUDA (its
`max_memory_allocated`, reset per case) and a rehearsal of the same model and batch shape on the meta
device (`megacrystal.rehearsal.rehearse`, one rank); prints both and their ratio and writes
benchmarks/results/rehearsal-vs-cuda-<gpu>-<date>.json. TARGETS: within 5%.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from train_throughput import CASES, run_case  # noqa: E402

from megacrystal.rehearsal import rehearse  # noqa: E402

# the data, phases and optimizer of the recipe; the throughput case's model and batch shape, one GPU
BASE = ["parallel.tp=1", "parallel.pp=1", "parallel.sequence_parallel=false", "train.precision=bf16"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="crystal-1b,crystal-7b-4l")
    ap.add_argument("--gpu", default="h200", help="the rehearsal's GPU kind (capacity only)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("rehearsal_vs_cuda: needs a CUDA device", file=sys.stderr)
        return 2
    rows = []
    import gc

    for name in a.cases.split(","):
        gc.collect()  # nothing of the previous case may stay in the peak of this one
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        measured = run_case(name, steps=2, warmup=1)
        rec = rehearse(str(ROOT / "examples" / "crystal_7b.yaml"), 1, a.gpu, BASE + CASES[name], steps=1, jobs=1)
        peak = rec["ranks"][0]["memory"]["peak_bytes"] if rec["ranks"] else 0
        cuda = measured["max_memory_gib"] * 2**30
        row = dict(
            case=name,
            cuda_max_memory_allocated=int(cuda),
            rehearsed_peak=int(peak),
            ratio=peak / cuda if cuda else None,
            rehearsed_breakdown=rec["ranks"][0]["memory"]["peak_breakdown"] if rec["ranks"] else None,
            verdict=rec["verdict"],
            findings=rec["lines"],
        )
        print(f"{name}: cuda {cuda / 2**30:.2f} GiB, rehearsed {peak / 2**30:.2f} GiB, ratio {row['ratio']:.3f}")
        rows.append(row)
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    out = ROOT / "benchmarks" / "results" / f"rehearsal-vs-cuda-{gpu}-{datetime.date.today().isoformat()}.json"
    payload = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=dict(platform=platform.platform(), gpu=torch.cuda.get_device_name()),
        versions=dict(python=platform.python_version(), torch=torch.__version__),
        rows=rows,
    )
    out.write_text(json.dumps(payload, indent=1))
    return 0 if all(r["ratio"] is not None and abs(r["ratio"] - 1) <= 0.05 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
