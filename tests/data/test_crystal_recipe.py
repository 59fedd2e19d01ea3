"""examples/crystal_7b.yaml through data-inspect, on stand-in corpora of the right relative sizes
(tests/data/crystal_standin.py), scaled down: per-phase tokens, released weights, epochs, FIM."""

import math
from pathlib import Path

import pytest
import yaml

from megacrystal.config import load_config
from megacrystal.data import inspect as inspect_mod
from tests.data_helpers import CRYSTAL_TOKENIZER, needs_crystal

from . import crystal_standin

RELEASED_TOKENS = {"phase1": 344.8e9, "phase2": 927.3e9, "phase3": 119.9e9}


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    from megacrystal.tokenizer import load_tokenizer

    tok = load_tokenizer("HuggingFaceTokenizer", str(CRYSTAL_TOKENIZER))
    root = tmp_path_factory.mktemp("crystal")
    overrides, scale = crystal_standin.build(str(root), tok, seq_length=64, global_batch_size=1)
    return inspect_mod.summarize(load_config(crystal_standin.RECIPE, overrides)), scale


@needs_crystal
def test_phase_tokens_and_released_weights(summary):
    s, scale = summary
    recipe = yaml.safe_load(Path(crystal_standin.RECIPE).read_text())
    for p, cfg in zip(s["phases"], recipe["data"]["phases"], strict=True):
        assert p["tokens"] * scale == pytest.approx(RELEASED_TOKENS[p["name"]], rel=1e-3), p["name"]
        weights = {k: (v["weight"] if isinstance(v, dict) else v) for k, v in cfg["blend"].items()}
        total = sum(weights.values())
        assert set(p["sources"]) == set(weights)
        for name, w in weights.items():
            got = p["sources"][name]["realised_weight"]
            assert abs(got - w / total) <= 2 / p["samples"], (p["name"], name, got, w)
            assert abs(got - w) < 2e-4, (p["name"], name, got, w)  # the released figure itself


@needs_crystal
def test_epochs_and_fim_per_source(summary):
    s, _ = summary
    p1, p2, p3 = (p["sources"] for p in s["phases"])
    for name, row in p1.items():  # phase 1 reads half of each SlimPajama subset, phase 2 the other half
        assert row["epochs_read"] == pytest.approx(0.5, abs=0.01) and row["fim_rate"] == 0
        assert p2[name]["epochs_read"] == pytest.approx(0.5, abs=0.01) and p2[name]["fim_rate"] == 0
    assert p2["starcoder"]["epochs_read"] == pytest.approx(2.0, abs=0.01)
    assert p2["slimpajama_github"]["kind"] == "code" and p2["slimpajama_github"]["fim_pieces_probed"] == 0
    for lang in ("python", "html", "javascript", "css"):
        row = p3[f"starcoder_{lang}"]
        assert row["epochs_read"] == pytest.approx(3.0, abs=0.01) and row["fim_rate"] == 0.3
    replay = p3["starcoder_fim_replay"]
    assert replay["replay"] == {"phase": "phase2", "start": 0.0, "end": 0.1} and replay["fim_rate"] == 0.9
    assert replay["replay_samples"] == int(0.1 * p2["starcoder"]["samples"])
    assert replay["epochs_read"] == pytest.approx(replay["samples"] / replay["replay_samples"])
    for row, rate in ((p2["starcoder"], 0.9), (replay, 0.9), (p3["starcoder_python"], 0.3)):
        n = row["fim_pieces_probed"]
        assert n > 100 and abs(row["fim_share"] - rate) < 4 * math.sqrt(rate * (1 - rate) / n) + 3 / n, row
