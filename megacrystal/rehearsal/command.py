"""`megacrystal rehearse --config C.yaml --gpus N [--gpu h100|h200|b200|a100] [overrides...] [--json FILE]`

Plays the launch of N GPU ranks on this CPU (meta device, fake process group) and checks it: no host
tensor in a device-group collective, the same collectives in every group, matched pipeline transfers,
host reads in the step, and device memory per rank against the GPU. Exit status 1 with one line per
finding (rank, call, frame); 0 when the launch passes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..atomic_io import atomic_write
from .gpus import GPUS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal rehearse", description=__doc__.split("\n\n")[1])
    ap.add_argument("--config", required=True, help="the training YAML")
    ap.add_argument("--gpus", type=int, required=True, help="world size: GPUs of the launch")
    ap.add_argument("--gpu", choices=sorted(GPUS), default="h100", help="the GPU whose memory each rank must fit")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps to play (default 2)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes playing ranks")
    ap.add_argument("--json", metavar="FILE", help="write the record (docs/rehearsal.md) to FILE")
    ap.add_argument("--workdir", help="stand-in data and index caches (default: a per-user temp directory)")
    ap.add_argument(
        "--no-recompute-choices",
        action="store_true",
        help="skip the table of what each model.recompute choice keeps (each layer shape rehearsed once, cached)",
    )
    ap.add_argument("overrides", nargs="*", help="dotted.key=value, as for megacrystal train")
    a = ap.parse_args(argv)
    if a.gpus < 1 or a.steps < 1:
        print("megacrystal rehearse: --gpus and --steps must be >= 1", file=sys.stderr)
        return 2
    from .report import table
    from .run import rehearse

    rec = rehearse(a.config, a.gpus, a.gpu, a.overrides, steps=a.steps, jobs=a.jobs, workdir=a.workdir)
    print(table(rec))
    if rec.get("ranks") and not a.no_recompute_choices:
        from .recompute_choices import choices, text

        rec["recompute_choices"] = choices(a.config, a.overrides, rec, a.gpu, jobs=a.jobs)
        print("\n" + "\n".join(text(rec["recompute_choices"])))
    if a.json:
        atomic_write(a.json, json.dumps(rec, indent=1))
    return 0 if rec["verdict"] == "pass" else 1
