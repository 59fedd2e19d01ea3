import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools.preprocess import PreprocessError, main, preprocess
from data_tools.readers import iter_documents
from megacrystal.data.indexed import IndexedDataset
from megacrystal.tokenizer import load_tokenizer
from tests.data_helpers import (
    CRYSTAL_TOKENIZER,
    ROOT,
    needs_crystal,
    small_corpus,
    small_hf_model,
    small_sp_model,
    write_jsonl,
)


def _corpus_jsonl():
    return [str(small_corpus() / f"{n}.jsonl") for n in ("code_python", "prose_pydoc", "code_c")]


def _check_every_document(prefix, docs, tok, eod=True):
    ds = IndexedDataset(prefix)
    assert len(ds) == ds.num_documents == len(docs)
    for i, d in enumerate(docs):
        assert ds[i].tolist() == tok.encode(d) + ([tok.eod] if eod else []), i
    return ds


@pytest.mark.parametrize(
    "kind,model", [("SentencePieceTokenizer", small_sp_model), ("HuggingFaceTokenizer", small_hf_model)]
)
def test_documents_equal_tokenizer_output_any_worker_count(tmp_path, kind, model):
    inputs = _corpus_jsonl()
    docs = list(iter_documents(inputs))
    tok = load_tokenizer(kind, model())
    outs = {}
    for w in (1, 2):
        s = preprocess(
            inputs,
            str(tmp_path / f"w{w}"),
            kind,
            model(),
            append_eod=True,
            workers=w,
            progress=False,
            chunk_bytes=64 << 10,
        )
        assert s["documents"] == len(docs) and s["skipped_total"] == 0 and s["workers"] == w
        prefix = str(tmp_path / f"w{w}_text_document")
        _check_every_document(prefix, docs, tok)
        outs[w] = [open(prefix + ext, "rb").read() for ext in (".bin", ".idx")]
    assert outs[1] == outs[2]


@needs_crystal
def test_crystal_tokenizer_done_when_command(tmp_path):
    """The issue's 'done when': tools/preprocess_data.py ... --append-eod --workers 2, no BOS, + EOD."""
    from tokenizers import Tokenizer

    src = _corpus_jsonl()[0]
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "preprocess_data.py"),
            "--input",
            src,
            "--json-keys",
            "text",
            "--output-prefix",
            str(tmp_path / "P"),
            "--tokenizer-type",
            "HuggingFaceTokenizer",
            "--tokenizer-model",
            str(CRYSTAL_TOKENIZER),
            "--append-eod",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    hf = Tokenizer.from_file(str(CRYSTAL_TOKENIZER))
    ds = IndexedDataset(tmp_path / "P_text_document")
    docs = list(iter_documents(src))
    assert ds.dtype == np.uint16 and len(ds) == len(docs)
    for i, d in enumerate(docs):
        assert ds[i].tolist() == hf.encode(d, add_special_tokens=False).ids + [2]
    summary = json.loads((tmp_path / "P_summary.json").read_text())
    assert summary["documents"] == len(docs) and summary["tokens"] == ds.num_tokens


def test_bad_lines_multi_keys_and_summary(tmp_path):
    p = tmp_path / "in.jsonl"
    write_jsonl(
        p,
        [
            {"text": "hello world", "code": "x = 1\n"},
            {"text": "no code"},
            {"text": 5, "code": "y"},
            {"text": "again", "code": "def f():\n    pass\n"},
        ],
    )
    with open(p, "ab") as f:
        f.write(b'{"text": "\\ud800 lone surrogate", "code": "z"}\n{broken\n\xff\xfe\n')
    s = preprocess(
        str(p),
        str(tmp_path / "o"),
        "SentencePieceTokenizer",
        small_sp_model(),
        json_keys=["text", "code"],
        append_eod=False,
        workers=1,
        progress=False,
        skip_bad_lines=True,
    )
    assert s["documents"] == 2
    assert s["skipped"] == {"encode_error": 1, "invalid_json": 1, "missing_key": 1, "not_string": 1, "not_utf8": 1}
    tok = load_tokenizer(None, small_sp_model())
    _check_every_document(str(tmp_path / "o_text_document"), ["hello world", "again"], tok, eod=False)
    _check_every_document(str(tmp_path / "o_code_document"), ["x = 1\n", "def f():\n    pass\n"], tok, eod=False)
    on_disk = json.loads((tmp_path / "o_summary.json").read_text())
    for k in ("documents", "tokens", "skipped", "seconds", "docs_per_s", "mb_per_s", "tokens_per_s"):
        assert k in on_disk


def test_partitions_and_code_tree_input(tmp_path):
    inputs = _corpus_jsonl()
    a = preprocess(
        inputs,
        str(tmp_path / "one"),
        None,
        small_sp_model(),
        append_eod=True,
        workers=2,
        progress=False,
        chunk_bytes=32 << 10,
    )
    b = preprocess(
        inputs,
        str(tmp_path / "three"),
        None,
        small_sp_model(),
        append_eod=True,
        workers=2,
        partitions=3,
        progress=False,
        chunk_bytes=32 << 10,
    )
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"one_text_document{ext}").read_bytes() == (
            tmp_path / f"three_text_document{ext}"
        ).read_bytes()
    parts = [IndexedDataset(p) for p in b["partitions"]]
    assert len(parts) == 3 and all(len(p) > 0 for p in parts)
    assert sum(len(p) for p in parts) == a["documents"]
    # a source tree: one document per file
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.py").write_text("print('a')\n")
    (tree / "b.c").write_text("int b;\n")
    (tree / "c.png").write_bytes(b"\x89PNG\x00\x00")
    (tree / "d.py").write_bytes(b"x = 1\x00")
    s = preprocess(
        str(tree), str(tmp_path / "code"), None, small_sp_model(), workers=1, progress=False, input_format="code"
    )
    assert s["documents"] == 2 and s["skipped"] == {"binary": 1, "unknown_language": 1}


def _corrupt_parquet(path):
    pq.write_table(
        pa.table({"text": [f"some text {i}" * 50 for i in range(400)]}),
        path,
        row_group_size=100,
        compression="snappy",
    )
    data = bytearray(open(path, "rb").read())
    meta = pq.ParquetFile(path).metadata
    start = meta.row_group(2).column(0).data_page_offset
    data[start + 16 : start + 400] = b"\xff" * 384  # wreck the third row group's page
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_error_is_clean_and_keeps_earlier_output(tmp_path, workers):
    good = write_jsonl(tmp_path / "good.jsonl", ["fine text"] * 10)
    prefix = str(tmp_path / "out")
    preprocess(good, prefix, None, small_sp_model(), append_eod=True, workers=1, progress=False)
    before = {e: open(prefix + "_text_document" + e, "rb").read() for e in (".bin", ".idx")}
    bad = str(tmp_path / "bad.parquet")
    _corrupt_parquet(bad)
    with pytest.raises(PreprocessError, match="nothing was written"):
        preprocess(bad, prefix, None, small_sp_model(), append_eod=True, workers=workers, progress=False)
    after = {e: open(prefix + "_text_document" + e, "rb").read() for e in (".bin", ".idx")}
    assert before == after
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_cli_errors_and_merge(tmp_path, capsys):
    assert (
        main(
            [
                "--input",
                str(tmp_path / "none.jsonl"),
                "--output-prefix",
                str(tmp_path / "x"),
                "--tokenizer-type",
                "SentencePieceTokenizer",
                "--tokenizer-model",
                small_sp_model(),
            ]
        )
        == 1
    )
    assert "none.jsonl" in capsys.readouterr().err
    src = write_jsonl(tmp_path / "a.jsonl", ["one", "two", "three"])
    assert (
        main(
            [
                "--input",
                src,
                "--output-prefix",
                str(tmp_path / "x"),
                "--tokenizer-type",
                "SentencePieceTokenizer",
                "--tokenizer-model",
                str(tmp_path / "missing.model"),
            ]
        )
        == 1
    )
    assert "missing.model" in capsys.readouterr().err
    from megacrystal.cli import main as cli

    for i in range(2):
        assert (
            cli(
                [
                    "preprocess",
                    "--input",
                    src,
                    "--output-prefix",
                    str(tmp_path / f"s{i}"),
                    "--no-progress",
                    "--tokenizer-type",
                    "SentencePieceTokenizer",
                    "--tokenizer-model",
                    small_sp_model(),
                    "--append-eod",
                ]
            )
            == 0
        )
    assert (
        cli(
            [
                "merge",
                "--inputs",
                str(tmp_path / "s0_text_document"),
                str(tmp_path / "s1_text_document.idx"),
                "--output-prefix",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    m, s0 = IndexedDataset(tmp_path / "m"), IndexedDataset(tmp_path / "s0_text_document")
    assert len(m) == 6 and [m[i].tolist() for i in range(3)] == [m[i + 3].tolist() for i in range(3)] == [
        s0[i].tolist() for i in range(3)
    ]


def test_preprocess_does_not_import_torch():
    code = (
        "import sys; from data_tools.preprocess import main; from megacrystal.cli import main as m; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert r.returncode == 0, r.stderr


def test_empty_input_gives_empty_readable_outputs(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    s = preprocess(
        str(tmp_path / "empty.jsonl"),
        str(tmp_path / "e"),
        None,
        small_sp_model(),
        append_eod=True,
        workers=2,
        progress=False,
    )
    assert s["documents"] == 0
    ds = IndexedDataset(tmp_path / "e_text_document")
    assert len(ds) == 0 and ds.num_tokens == 0
