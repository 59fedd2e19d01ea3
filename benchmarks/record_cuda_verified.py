"""Record that this build of the CUDA kernels passed its GPU tests on this GPU (called by gpu_check.sh).

    python benchmarks/record_cuda_verified.py PYTEST_SUMMARY_LINE [--file benchmarks/results/cuda-kernels-verified.json]

Appends {build_id, capability, gpu, date, passed, tests} to the JSON list (atomic write). `optim.impl: auto`
and `model.grad_accum_fusion: auto` pick the CUDA kernels only for a (build_id, capability) recorded here
with passed=true (megacrystal/compiled/select.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megacrystal.compiled import cuda_kernels
from megacrystal.compiled.select import RECORD, capability


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("summary", help="pytest's last line for tests/test_cuda_kernels_gpu.py")
    ap.add_argument("--file", default=str(RECORD))
    a = ap.parse_args(argv)
    lib = cuda_kernels.library()
    if lib is None or not torch.cuda.is_available():
        print(f"record_cuda_verified: nothing to record ({cuda_kernels.why_missing() or 'no GPU'})", file=sys.stderr)
        return 1
    passed = bool(re.search(r"\b\d+ passed\b", a.summary)) and not re.search(r"\b(failed|error|skipped)\b", a.summary)
    entry = dict(
        build_id=lib.build_id,
        capability=capability(torch.device("cuda")),
        gpu=torch.cuda.get_device_name(0),
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__,
        passed=passed,
        tests=a.summary.strip(),
    )
    path = Path(a.file)
    entries = json.loads(path.read_text()) if path.exists() else []
    entries.append(entry)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(entries, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    print(f"recorded {entry} in {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
