"""The kernel benchmark runner works end to end (on CPU: reference paths at small shapes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_run_all_writes_json_and_table(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "kernels/bench/run_all.py"),
            "--out",
            str(tmp_path),
            "--quick",
            "--only",
            "norm,cross_entropy,attention",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    files = list(tmp_path.glob("kernels-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["copy_bandwidth_GBps"] > 0
    m = data["machine"]
    assert m["torch"] and m["date"] and m["device"]
    rows = data["results"]
    assert {r["op"] for r in rows} == {"layernorm", "rmsnorm", "cross_entropy", "attention"}
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    assert not [r for r in rows if "error" in r]
    assert all(r["ms"] > 0 for r in rows)
    assert all(r["GBps"] > 0 for r in rows if r["op"] != "attention")
    assert all(r["TFLOPs"] > 0 for r in rows if r["op"] == "attention")
    assert "provider" in p.stdout and "copy bandwidth" in p.stdout


def test_tuner_smoke_checks_every_variant(tmp_path):
    """The launch-config sweep runs each kernel variant (under the interpreter on CPU, tiny shapes), checks it
    against the reference and writes its JSON; a variant computing a wrong result would be listed as FAILED."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRITON_INTERPRET="1")
    p = subprocess.run(
        [sys.executable, str(ROOT / "kernels/bench/tune_kernels.py"), "--out", str(tmp_path), "--smoke", "--no-e2e"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "0 failed the check against the reference" in p.stdout, p.stdout[-2000:]
    data = json.loads(next(tmp_path.glob("tune-*.json")).read_text())
    assert {r["op"] for r in data["sweep"]} == {"layernorm", "rmsnorm", "rotary", "cross_entropy"}
    assert all(r["ok"] and r["ms"] > 0 for r in data["sweep"])
    assert data["winners"]
