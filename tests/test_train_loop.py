"""The trainer end to end on real data: local corpus -> SentencePiece -> .bin/.idx -> two phases.

Checks metrics.jsonl, phases, per-source validation, checkpoints (+ export of the consolidated
model), exact resume mid-phase, and that a torchrun launch with tp=2 trains the same model. The two
comparisons run in float64 (`train.precision=fp64`) within 1e-9, a bound that holds on any CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from megacrystal.model import init_draw
from tests.data_helpers import session_dir, small_corpus, small_sp_model
from tests.dist import torchrun

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir():
    from data_tools.preprocess import preprocess

    out = session_dir() / "train-tokens"
    tok = small_sp_model()
    for name in ("prose_pydoc", "code_python"):
        if not Path(f"{out}/{name}_text_document.idx").is_file():
            preprocess(
                [str(small_corpus() / f"{name}.jsonl")],
                str(out / name),
                "SentencePieceTokenizer",
                tok,
                append_eod=True,
                workers=1,
                progress=False,
            )
    return out, tok


def run_config(data_dir, out_dir: Path, **train) -> Path:
    tokens, tok = data_dir
    cfg = {
        "model": {
            "preset": "tiny",
            "num_layers": 2,
            "hidden_size": 32,
            "num_heads": 4,
            "ffn_hidden_size": 64,
            "vocab_size": 768,
            "max_seq_len": 64,
        },
        "data": {
            "tokenizer_type": "SentencePieceTokenizer",
            "tokenizer_model": tok,
            "seq_length": 32,
            "valid_fraction": 0.05,
            "cache_dir": str(out_dir / "cache"),
            "sources": {
                "prose": {"prefixes": [f"{tokens}/prose_pydoc_text_document"], "kind": "nl"},
                "code": {"prefixes": [f"{tokens}/code_python_text_document"], "kind": "code", "fim": True},
            },
            "phases": [
                {
                    "name": "language",
                    "steps": 4,
                    "blend": {"prose": 0.9, "code": 0.1},
                    "lr": 3e-3,
                    "min_lr": 3e-4,
                    "warmup_steps": 2,
                },
                {
                    "name": "code",
                    "steps": 4,
                    "blend": {"prose": 0.3, "code": 0.7},
                    "fim_rate": 0.9,
                    "lr": 2e-3,
                    "min_lr": 2e-4,
                    "warmup_steps": 1,
                },
            ],
        },
        "train": {
            "micro_batch_size": 2,
            "global_batch_size": 4,
            "out_dir": str(out_dir),
            "device": "cpu",
            "eval_interval": 4,
            "eval_iters": 1,
            **train,
        },
    }
    path = out_dir.parent / f"{out_dir.name}.yaml"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_cli(args: list[str]) -> int:
    from megacrystal.cli import main

    return main(["train", *args])


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_phases_metrics_checkpoint_and_export(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr("megacrystal.train.long_run.HOUR_S", 1e-9)  # these 8 steps count as a long run
    assert train_cli(["--config", str(run_config(data_dir, out)), "train.save_consolidated=true"]) == 0
    err = capsys.readouterr().err
    assert "checkpoints only at its end" in err and "(8 steps, ~" in err  # the start-up warning, planner-timed
    assert "step watchdog off, MFU peak: measured CPU fp32 matmul" in err  # one rank: no watchdog by default
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["phase"] for r in rows] == ["language"] * 4 + ["code"] * 4
    for key in ("loss", "lr", "grad_norm", "tokens", "samples_per_source", "tokens_per_s", "mfu"):
        assert all(key in r for r in rows), key
    assert rows[-1]["tokens"] == 8 * 4 * 32
    assert sum(rows[-1]["samples_per_source"].values()) == 8 * 4
    # phase 1 is mostly prose, phase 2 mostly code
    after1 = rows[3]["samples_per_source"]
    assert after1["prose"] > after1["code"]
    in2 = {k: rows[-1]["samples_per_source"][k] - after1[k] for k in after1}
    assert in2["code"] > in2["prose"]
    assert set(rows[3]["valid_loss"]) == {"prose", "code"}
    assert rows[0]["lr"] == pytest.approx(1.5e-3) and rows[4]["lr"] == pytest.approx(2e-3)
    assert any((out / "tensorboard").iterdir())
    ckpt = out / "checkpoints" / "step_00000008"
    assert (out / "checkpoints" / "latest").read_text() == "step_00000008"
    assert (ckpt / "manifest.json").is_file() and (ckpt / "trainer.json").is_file()
    assert not (ckpt / "model").exists()  # nobody gathers the model to save; export-hf reads the shards
    from megacrystal.checkpoint import load_model_state
    from megacrystal.model.serialization import load_model

    _, consolidated = load_model(out / "model")  # train.save_consolidated: written once, at the end
    _, sharded = load_model_state(ckpt)
    assert all(torch.equal(consolidated[k], v) for k, v in sharded.items())
    from megacrystal.cli import main

    assert (
        main(["export-hf", "--checkpoint", str(out), "--format", "crystalcoder", "--output", str(tmp_path / "hf")]) == 0
    )
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "crystalcoder"


def test_resume_mid_phase_and_at_the_phase_boundary_is_bitwise(data_dir, tmp_path):
    full = tmp_path / "full"
    assert train_cli(["--config", str(run_config(data_dir, full))]) == 0  # fp32: same layout resumes bit for bit
    part = tmp_path / "part"
    cfg = run_config(data_dir, part)
    assert train_cli(["--config", str(cfg), "train.max_steps=3"]) == 0  # stops inside phase 1
    assert (part / "checkpoints" / "latest").read_text() == "step_00000003"
    assert train_cli(["--config", str(cfg), "train.max_steps=4"]) == 0  # resumes at 3, stops at the boundary
    assert train_cli(["--config", str(cfg)]) == 0  # resumes at step 4: phase 2 starts
    a, b = read_metrics(full), read_metrics(part)
    assert [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == ra["loss"], ra["step"]  # CPU fp32, same layout: bit for bit
        assert rb["grad_norm"] == ra["grad_norm"], ra["step"]
        assert rb["samples_per_source"] == ra["samples_per_source"]
    from megacrystal.checkpoint import load_model_state

    _, sa = load_model_state(full / "checkpoints" / "step_00000008")
    _, sb = load_model_state(part)  # a run directory: its newest intact checkpoint
    assert all(torch.equal(sb[k], sa[k]) for k in sa)


def test_torchrun_tensor_parallel_trains_the_same_model(data_dir, tmp_path):
    serial = tmp_path / "serial"
    assert train_cli(["--config", str(run_config(data_dir, serial, precision="fp64")), "train.max_steps=3"]) == 0
    tp = tmp_path / "tp"
    cfg = run_config(data_dir, tp, precision="fp64")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = torchrun(
        2,
        "megacrystal.train",
        "--config",
        str(cfg),
        "parallel.tp=2",
        "train.max_steps=3",
    )
    # own process group: on a timeout the workers go too, not only torchrun
    p = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    assert p.returncode == 0, err[-3000:]
    rows = read_metrics(serial)
    assert len(rows) == 3
    for ra, rb in zip(rows, read_metrics(tp), strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-9)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-9)


def test_bad_data_fails_fast_with_the_field(data_dir, tmp_path, capsys):
    cfg = run_config(data_dir, tmp_path / "bad")
    rc = train_cli(["--config", str(cfg), "data.sources.code.prefixes=[/nonexistent/x]"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "data.sources.code.prefixes[0]" in err and "/nonexistent/x" in err
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_a_tokenizer_larger_than_the_vocabulary_fails_fast(data_dir, tmp_path, capsys):
    cfg = run_config(data_dir, tmp_path / "small_vocab")
    assert train_cli(["--config", str(cfg), "model.vocab_size=100"]) == 2
    assert "model.vocab_size: 100 is smaller than the tokenizer's" in capsys.readouterr().err
    assert not (tmp_path / "small_vocab" / "checkpoints").exists()


def test_retention_fallback_past_a_damaged_checkpoint_and_init_from(data_dir, tmp_path):
    run = tmp_path / "run"
    cfg = run_config(data_dir, run, save_interval=1, keep_checkpoints=2)
    drawn = init_draw.elements_drawn()
    assert train_cli(["--config", str(cfg), "train.max_steps=4"]) == 0
    assert init_draw.elements_drawn() > drawn  # a fresh run draws its initial weights
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000003", "step_00000004"]
    shard = root / "step_00000004" / "__0_0.distcp"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    shard.write_bytes(bytes(raw))
    first = read_metrics(run)
    drawn = init_draw.elements_drawn()
    assert train_cli(["--config", str(cfg), "train.max_steps=4"]) == 0  # falls back to step 3, replays step 4
    assert init_draw.elements_drawn() == drawn  # a resume draws nothing
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    assert read_metrics(run)[3]["loss"] == first[3]["loss"]  # the replay is the same step
    side = [json.loads(x) for x in (run / "metrics.superseded.jsonl").read_text().splitlines()]
    assert side[0]["superseded_by_resume_at_step"] == 3 and side[1] == first[3]  # moved, not lost
    names = sorted(p.name for p in root.iterdir())
    assert names == ["latest", "step_00000003", "step_00000004", "step_00000004.replaced-1"]
    new = tmp_path / "new"
    ncfg = run_config(data_dir, new, init_from=str(run), init_optimizer=False)
    assert train_cli(["--config", str(ncfg), "train.max_steps=1"]) == 0
    assert init_draw.elements_drawn() == drawn  # nor does train.init_from
    # a new run (step 1, same first batch) from the trained weights: lower loss than the fresh start
    assert read_metrics(new)[0]["step"] == 1 and read_metrics(new)[0]["loss"] < first[0]["loss"] - 0.1
