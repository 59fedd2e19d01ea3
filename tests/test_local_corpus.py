"""data_tools/local_corpus.py: every source written with labelled lines, deterministic, clear errors."""

import json

from data_tools.local_corpus import SOURCES, build_local_corpus, main
from tests.data_helpers import small_corpus


def test_every_source_file_is_written_with_labelled_lines():
    d = small_corpus()
    summary = json.loads((d / "summary.json").read_text())
    assert set(summary["sources"]) == set(SOURCES)
    for name in SOURCES:
        path = d / f"{name}.jsonl"
        assert path.is_file(), name  # written even when the source is empty here
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == summary["sources"][name]["documents"]
        for line in lines:
            rec = json.loads(line)
            assert set(rec) == {"text", "source", "path", "language"} and rec["source"] == name and rec["text"]
        assert summary["sources"][name]["text_bytes"] <= 0.25 * (1 << 20) or len(lines) == 1
    # these exist wherever Python does
    assert summary["sources"]["prose_pydoc"]["documents"] > 10
    assert summary["sources"]["code_python"]["documents"] > 3
    langs = {json.loads(x)["language"] for x in (d / "code_python.jsonl").read_text().splitlines()}
    assert langs == {"python"}


def test_deterministic_and_cli(tmp_path, capsys):
    build_local_corpus(str(tmp_path / "a"), 0.05, sources=("prose_pydoc", "code_python", "code_web"))
    assert (
        main(
            [
                "--output",
                str(tmp_path / "b"),
                "--max-mb-per-source",
                "0.05",
                "--sources",
                "prose_pydoc,code_python,code_web",
            ]
        )
        == 0
    )
    assert "prose_pydoc.jsonl" in capsys.readouterr().out
    for name in ("prose_pydoc", "code_python", "code_web"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()


def test_unknown_source_is_a_clear_error(tmp_path, capsys):
    assert main(["--output", str(tmp_path), "--sources", "prose_pydoc,novels"]) == 2
    assert "novels" in capsys.readouterr().err
