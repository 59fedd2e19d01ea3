"""The README's main job, shortened: `megacrystal demo` from an empty directory."""

import json

from megacrystal.cli import main


def test_demo_runs_end_to_end_from_an_empty_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "train.max_steps=6", "train.eval_interval=3", "train.log_interval=1"]) == 0
    corpus = json.loads((tmp_path / "demo_data" / "corpus" / "summary.json").read_text())
    assert corpus  # sources gathered from this machine
    assert (tmp_path / "demo_data" / "tokenizer" / "tokenizer.model").is_file()
    assert (tmp_path / "demo_data" / "tokens" / "code_python_text_document.idx").is_file()
    rows = [json.loads(x) for x in (tmp_path / "runs" / "demo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7)) and rows[0]["phase"] == "language"
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert "valid_loss" in rows[2]
    assert (tmp_path / "runs" / "demo" / "checkpoints" / "latest").read_text() == "step_00000006"
    # a second run reuses every data step and resumes the finished run without training again
    assert main(["demo", "train.max_steps=6"]) == 0
    assert len((tmp_path / "runs" / "demo" / "metrics.jsonl").read_text().splitlines()) == 6
