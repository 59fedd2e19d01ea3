"""`megacrystal data-inspect` on examples/demo.yaml over a demo-shaped local corpus."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megacrystal.data import inspect as inspect_mod

from . import corpus as corpus_mod

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_cwd(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("demo")
    corpus_mod.build_demo_layout(str(cwd))  # prose_sharedoc empty, as on some machines
    return cwd


def test_demo_config_both_phases_within_one_sample(demo_cwd, monkeypatch, capsys):
    monkeypatch.chdir(demo_cwd)
    assert inspect_mod.main(["--config", str(ROOT / "examples/demo.yaml"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in s["phases"]] == ["language", "code"]
    for p in s["phases"]:
        for name, v in p["sources"].items():
            assert abs(v["off_by_samples"]) < 1.0, (p["name"], name)
        assert p["sources"]["prose_sharedoc"]["samples"] == 0
    lang, code = s["phases"]
    assert lang["code_share"] < 0.2 and 0.6 < code["code_share"] < 0.8
    assert lang["fim_share"] == 0 and 0.8 < code["fim_share"] <= 1.0
    assert os.path.isdir(demo_cwd / "runs/demo/index_cache")


def test_cli_table_and_decode(demo_cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "megacrystal.cli",
            "data-inspect",
            "--config",
            str(ROOT / "examples/demo.yaml"),
            "--decode",
            "1",
        ],
        cwd=demo_cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "phase language:" in r.stdout and "phase code:" in r.stdout
    # --decode shows the first sample of each phase; phase 2 starts after phase 1's steps x global batch
    import yaml

    demo = yaml.safe_load((ROOT / "examples/demo.yaml").read_text())
    first_of_phase2 = demo["data"]["phases"][0]["steps"] * demo["train"]["global_batch_size"]
    assert "--- sample 0 (" in r.stdout and f"--- sample {first_of_phase2} (" in r.stdout


def test_missing_data_is_one_clear_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "-m", "megacrystal.cli", "data-inspect", "--config", str(ROOT / "examples/crystal_7b.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert (
        r.stderr.strip().splitlines()[-1].startswith("megacrystal data-inspect: ")
        and "data.sources.slimpajama_commoncrawl.prefixes[0]" in r.stderr
    )
