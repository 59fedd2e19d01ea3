"""Keep this machine's CUDA-kernel verification as evidence under benchmarks/results/ (called by gpu_check.sh
after `megacrystal doctor --verify`).

    python benchmarks/record_cuda_verified.py [--out benchmarks/results]

Copies the record `doctor --verify` wrote in the user's cache directory (megacrystal/compiled/record.py) for
the loaded library's build and this GPU into OUT/cuda-kernels-verified-<GPU>-<date>.json, a new file each
time. Evidence only: `optim.impl: auto` reads the user's cache, never this folder. Exit 0 when the record
says every check passed, 1 otherwise (no GPU, no library, no record, or a failed check).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megacrystal.compiled import cuda_kernels
from megacrystal.compiled.record import read_record, record_path
from megacrystal.compiled.select import capability


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results", help="folder for the evidence file")
    a = ap.parse_args(argv)
    lib = cuda_kernels.library(quiet=True)
    if lib is None or not torch.cuda.is_available():
        print(f"record_cuda_verified: nothing to record ({cuda_kernels.why_missing() or 'no GPU'})", file=sys.stderr)
        return 1
    cap = capability(torch.device("cuda"))
    rec = read_record(lib.build_id, cap)
    if rec is None:
        print(f"record_cuda_verified: no record at {record_path(lib.build_id, cap)}", file=sys.stderr)
        return 1
    gpu = torch.cuda.get_device_name(0).replace(" ", "_")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(a.out) / f"cuda-kernels-verified-{gpu}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "x") as f:  # a new file: earlier evidence is never overwritten
        f.write(json.dumps(rec, indent=1) + "\n")
    print(f"{out}: build {rec['build_id']} on sm {cap}: {'passed' if rec['passed'] else 'FAILED'}")
    return 0 if rec["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
