"""`megacrystal doctor` on the CPU box, and NVIDIA-apex detection without importing apex."""

import json
import sys

import pytest

from megacrystal.cli import main as cli
from megacrystal.compiled import apex as apex_support


def test_doctor_reports_this_cpu_machine(capsys):
    assert cli(["doctor", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["device"] == "cpu" and r["gpus"] == []
    assert r["torch"].startswith("2.")
    ops = r["ops"]
    assert {ops[k]["uses"] for k in ("norm", "rotary", "swiglu", "cross_entropy")} == {"torch"}
    assert ops["attention"]["uses"] == "sdpa" and "need CUDA" in ops["attention"]["why"]
    assert ops["optimizer step"]["uses"] == "torch foreach AdamW"
    assert ops["grad-accum fusion (bf16)"]["uses"] == "off"
    assert r["packages"]["triton"]  # the dev extra brings it
    commands = {m["piece"].split(" (")[0]: m["command"] for m in r["missing"]}
    assert "NVIDIA apex" in commands and "--cuda_ext" in commands["NVIDIA apex"]
    if not r["cuda_kernels"]["built"]:
        assert "megacrystal.compiled.build" in commands["CUDA kernels"]
    assert cli(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "each op on this machine:" in text and "missing (and the command that adds it):" in text


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "apex", raising=False)
    apex_support.status.cache_clear()
    yield tmp_path
    apex_support.status.cache_clear()


def test_unrelated_apex_is_reported_and_never_imported(fake_site, caplog):
    pkg = fake_site / "apex"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('the web toolkit must not be imported')\n")
    st = apex_support.status()
    assert st["installed"] and not st["nvidia"] and "not NVIDIA apex" in st["detail"]
    assert not apex_support.usable("fused_norm") and apex_support.apex_fused_adam() is None
    assert "apex" not in sys.modules


def test_python_only_nvidia_apex_lacks_its_kernels(fake_site):
    pkg = fake_site / "apex"
    for sub in ("optimizers", "normalization"):
        (pkg / sub).mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('not imported by detection')\n")
    (pkg / "normalization" / "fused_layer_norm.py").write_text("")
    st = apex_support.status()
    assert st["installed"] and not st["nvidia"] and "without its CUDA extensions" in st["detail"]
    assert st["pieces"] == {"fused_norm": False, "fused_adam": False, "fused_wgrad": False}
