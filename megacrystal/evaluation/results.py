"""Where a run's evaluation results live and how they are named.

    RUN/eval/step_00001000-1a2b3c4d.json          `megacrystal eval` of checkpoint step 1000
    RUN/eval/lm_eval-step_00001000-5e6f7a8b.json  `megacrystal eval --harness` of the same checkpoint

The hex part is a fingerprint of the scoring settings (`settings_fingerprint`): results measured with
other settings get other names, so none replaces another, and `eval --all` knows which checkpoints are
already scored with these settings. Results are written once (`write_new_json`: temporary file, fsync,
then a hard link that fails if the name exists) and never overwritten. Reports named `step_N.json`
(before fingerprints) are still read, as settings `None`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..atomic_io import write_new

REPORT = re.compile(r"^step_(\d{8,})(?:-([0-9a-f]{8}))?\.json$")
HARNESS = re.compile(r"^lm_eval-step_(\d{8,})-([0-9a-f]{8})\.json$")


def settings_fingerprint(settings: dict) -> str:
    """8 hex digits of the SHA-256 of the settings as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def report_path(run_dir, step: int, fingerprint: str) -> Path:
    return Path(run_dir) / "eval" / f"step_{int(step):08d}-{fingerprint}.json"


def harness_path(run_dir, step: int, fingerprint: str) -> Path:
    return Path(run_dir) / "eval" / f"lm_eval-step_{int(step):08d}-{fingerprint}.json"


def _scan(run_dir, pattern) -> dict:
    out: dict = {}
    d = Path(run_dir) / "eval"
    if d.is_dir():
        for p in sorted(d.iterdir()):
            m = pattern.match(p.name)
            if m and p.is_file():
                out.setdefault(m.group(2), {})[int(m.group(1))] = p
    return out


def run_reports(run_dir) -> dict[str | None, dict[int, Path]]:
    """{settings fingerprint (None: an unfingerprinted report): {step: path}} of RUN/eval/."""
    return _scan(run_dir, REPORT)


def run_harness_results(run_dir) -> dict[str, dict[int, Path]]:
    return _scan(run_dir, HARNESS)


def write_new_json(path, obj: dict) -> bool:
    """Write `obj` as JSON at `path` atomically unless `path` exists; -> whether it was written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_new(path, json.dumps(obj, indent=1) + "\n")
