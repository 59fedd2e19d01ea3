"""Megatron-LM's preprocess_data.py command lines: every flag of its script is honoured or refused with a
message naming it; --tokenizer-model takes a file or a tokenizer directory."""

import importlib.util
import shutil

import pytest

from data_tools.preprocess import main
from megacrystal.data.indexed import IndexedDataset
from tests.data_helpers import small_hf_model, small_sp_model, write_jsonl


def _args(tmp_path, name, model, kind="SentencePieceTokenizer", extra=()):
    src = write_jsonl(tmp_path / "in.jsonl", [f"document number {i}\n" * (i + 1) for i in range(30)])
    args = ["--input", src, "--output-prefix", str(tmp_path / name), "--tokenizer-type", kind]
    return args + ["--tokenizer-model", model, "--workers", "2", "--no-progress", *extra]


def _out(tmp_path, name):
    return [(tmp_path / f"{name}_text_document{e}").read_bytes() for e in (".bin", ".idx")]


def test_megatron_flags_with_no_effect_are_accepted(tmp_path, capsys):
    assert main(_args(tmp_path, "plain", small_sp_model(), extra=["--append-eod"])) == 0
    megatron = ["--append-eod", "--partitions", "2", "--keep-sequential-samples", "--log-interval", "1000"]
    megatron += ["--keep-newlines", "--lang", "english", "--vocab-extra-ids", "0", "--vocab-size", "700"]
    megatron += ["--workers-to-check", "16", "32", "--max-documents", "100", "--performance-dir", str(tmp_path)]
    assert main(_args(tmp_path, "meg", small_sp_model(), extra=megatron)) == 0
    assert _out(tmp_path, "meg") == _out(tmp_path, "plain")
    assert (
        len(IndexedDataset(tmp_path / "meg_0_text_document")) + len(IndexedDataset(tmp_path / "meg_1_text_document"))
        == 30
    )


@pytest.mark.parametrize(
    "extra,named",
    [
        (["--split-sentences"], "--split-sentences"),
        (["--vocab-file", "vocab.json"], "--vocab-file"),
        (["--merge-file", "merges.txt"], "--merge-file"),
        (["--tiktoken-pattern", "v2"], "--tiktoken-pattern"),
        (["--find-optimal-num-workers"], "--find-optimal-num-workers"),
        (["--tokenizer-type", "GPT2BPETokenizer"], "--tokenizer-type GPT2BPETokenizer (Megatron's type)"),
        (["--tokenizer-type", "MadeUpTokenizer"], "--tokenizer-type MadeUpTokenizer (an unknown type)"),
    ],
)
def test_refused_flags_are_named(tmp_path, capsys, extra, named):
    assert main(_args(tmp_path, "r", small_sp_model(), extra=extra)) == 2
    err = capsys.readouterr().err
    assert named in err and "not supported" in err and err.count("\n") == 1, err
    if extra == ["--split-sentences"] and importlib.util.find_spec("nltk") is None:
        assert "needs NLTK, which is not installed" in err
    assert not list(tmp_path.glob("r_*"))


def test_unknown_flag_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(_args(tmp_path, "u", small_sp_model(), extra=["--no-such-flag"]))
    assert e.value.code == 2 and "--no-such-flag" in capsys.readouterr().err


def test_tokenizer_model_directory(tmp_path, capsys):
    for kind, model, fname in (
        ("HuggingFaceTokenizer", small_hf_model(), "tokenizer.json"),
        ("SentencePieceTokenizer", small_sp_model(), "tokenizer.model"),
    ):
        d = tmp_path / f"dir_{fname}"
        d.mkdir()
        shutil.copy(model, d / fname)
        assert main(_args(tmp_path, f"file_{kind}", model, kind)) == 0
        assert main(_args(tmp_path, f"dir_{kind}", str(d), kind)) == 0
        assert _out(tmp_path, f"dir_{kind}") == _out(tmp_path, f"file_{kind}")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    capsys.readouterr()
    assert main(_args(tmp_path, "e", str(empty), "HuggingFaceTokenizer")) == 1
    err = capsys.readouterr().err
    assert "empty_dir: a tokenizer directory without tokenizer.json" in err and err.count("\n") == 1
