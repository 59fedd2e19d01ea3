"""Damaged corpus files never pass silently: truncated and bit-flipped .zst, .gz, parquet and jsonl fail
the run with one line naming the file and where, nothing is published (or --skip-bad-files leaves the
file out and names it); byte counters are exact for any line length; a folder without corpus files is
an error unless --input-format code."""

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data_tools.inputs import InputError
from data_tools.preprocess import main, preprocess
from data_tools.readers import iter_documents
from data_tools.streams import DamagedInput
from tests.data_helpers import corpus_texts, small_sp_model, write_jsonl

DOCS = (corpus_texts("code_python") + corpus_texts("prose_pydoc"))[:40]


def _raw():
    return "".join(json.dumps({"text": d}) + "\n" for d in DOCS).encode()


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x04
    return bytes(b)


def _zst(raw):  # two frames with checksums and content sizes, as the zstd CLI writes them
    c = zstandard.ZstdCompressor(write_checksum=True)
    return c.compress(raw[: len(raw) // 2]) + c.compress(raw[len(raw) // 2 :])


def _parquet_bytes(tmp_path):
    p = tmp_path / "src.parquet"
    pq.write_table(pa.table({"text": DOCS}), p, row_group_size=10, write_page_checksum=True)
    return p.read_bytes()


def _damaged(kind, tmp_path):
    """(file name, damaged bytes, regex the error must match)."""
    raw = _raw()
    if kind == "zst-cut":
        z = _zst(raw)
        pattern = r"c.jsonl.zst: damaged input at byte \d+ \(end of file\), after \d+ complete lines.*cut short"
        return "c.jsonl.zst", z[: len(z) - 37], pattern
    if kind == "zst-flip":
        z = _zst(raw)
        return "c.jsonl.zst", _flip(z, len(z) // 3), r"c.jsonl.zst: damaged input at the zstd frame at byte 0"
    if kind == "gz-cut":
        g = gzip.compress(raw)
        return "g.jsonl.gz", g[: len(g) // 2], r"g.jsonl.gz: damaged input at compressed byte ~\d+.*gzip"
    if kind == "gz-flip":
        g = gzip.compress(raw)
        # deflate may decode the flipped bits to wrong text before the CRC at the end fails: either is named
        where = r"(compressed byte ~\d+.*gzip|line \d+ \(byte \d+\): invalid JSON)"
        return "g.jsonl.gz", _flip(g, len(g) // 2), rf"g.jsonl.gz: damaged input at {where}"
    if kind == "parquet-cut":
        d = _parquet_bytes(tmp_path)
        return "p.parquet", d[: len(d) - 50], r"p.parquet: damaged input at its footer: not a readable parquet"
    if kind == "parquet-flip":
        d = _parquet_bytes(tmp_path)
        md = pq.ParquetFile(tmp_path / "src.parquet").metadata
        col = md.row_group(2).column(0)
        at = (col.dictionary_page_offset or col.data_page_offset) + col.total_compressed_size // 2
        return "p.parquet", _flip(d, at), r"p.parquet: damaged input at row group 2 \(bytes \d+-\d+\): cannot decode"
    if kind == "jsonl-cut":
        cut = raw.rindex(b'"text"')  # inside the last record
        line = raw[:cut].count(b"\n") + 1
        return "j.jsonl", raw[: cut + 12], rf"j.jsonl: damaged input at line {line} \(byte \d+\).*cut short"
    if kind == "jsonl-flip":
        start = sum(len(x) + 1 for x in raw.split(b"\n")[:6])  # line 7
        return "j.jsonl", _flip(raw, start), r"j.jsonl: damaged input at line 7 \(byte \d+\): invalid JSON"
    raise AssertionError(kind)


KINDS = ["zst-cut", "zst-flip", "gz-cut", "gz-flip", "parquet-cut", "parquet-flip", "jsonl-cut", "jsonl-flip"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_file_fails_the_run_and_publishes_nothing(tmp_path, kind, capsys):
    name, data, pattern = _damaged(kind, tmp_path)
    bad = tmp_path / name
    bad.write_bytes(data)
    with pytest.raises(DamagedInput, match=pattern):
        list(iter_documents(str(bad)))
    prefix = str(tmp_path / "out")
    good = write_jsonl(tmp_path / "good.jsonl", ["fine text"] * 5)
    preprocess(good, prefix, None, small_sp_model(), append_eod=True, workers=1, progress=False)
    before = {e: open(prefix + "_text_document" + e, "rb").read() for e in (".bin", ".idx")}
    args = ["--input", good, str(bad), "--output-prefix", prefix, "--tokenizer-type", "SentencePieceTokenizer"]
    args += ["--tokenizer-model", small_sp_model(), "--workers", "2", "--no-progress", "--partitions", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing was written" in err[0], err
    assert __import__("re").search(pattern, err[0]), err[0]
    after = {e: open(prefix + "_text_document" + e, "rb").read() for e in (".bin", ".idx")}
    assert before == after
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp") or f.startswith("out_0")]


def test_skip_bad_files_leaves_them_out_and_names_them(tmp_path):
    good1 = write_jsonl(tmp_path / "a.jsonl", DOCS[:7])
    good2 = write_jsonl(tmp_path / "d.jsonl", DOCS[7:12])
    bads = []
    for kind in ("zst-cut", "parquet-flip", "jsonl-flip"):
        name, data, _ = _damaged(kind, tmp_path)
        (tmp_path / f"b_{name}").write_bytes(data)
        bads.append(str(tmp_path / f"b_{name}"))
    os.remove(tmp_path / "src.parquet")
    kw = dict(append_eod=True, progress=False)
    ref = preprocess([good1, good2], str(tmp_path / "ref"), None, small_sp_model(), workers=1, **kw)
    for w in (1, 2):
        s = preprocess(
            [good1, *bads, good2], str(tmp_path / f"s{w}"), None, small_sp_model(), workers=w, skip_bad_files=True, **kw
        )
        assert [b["path"] for b in s["bad_files"]] == bads
        assert all("damaged input at" in b["error"] for b in s["bad_files"])
        assert s["documents"] == ref["documents"] == 12
        for ext in (".bin", ".idx"):
            assert (tmp_path / f"s{w}_text_document{ext}").read_bytes() == (
                tmp_path / f"ref_text_document{ext}"
            ).read_bytes()


def test_byte_counts_exact_for_any_line_length(tmp_path):
    docs = ["x" * 300_000, "short", "y" * 70_000 + "\n" + "z" * 5]
    raw = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    (tmp_path / "long.jsonl").write_bytes(raw)
    (tmp_path / "long.jsonl.zst").write_bytes(_zst(raw))
    for name in ("long.jsonl", "long.jsonl.zst"):
        s = preprocess(
            str(tmp_path / name),
            str(tmp_path / name.replace(".", "_")),
            None,
            small_sp_model(),
            workers=1,
            progress=False,
            chunk_bytes=4096,
        )
        assert s["documents"] == 3
        assert s["input_bytes"] == len(raw), name
        assert s["input_file_bytes"] == os.path.getsize(tmp_path / name)
        # both are rounded to 3 decimals: the rate lies within what the rounded seconds allow (no clock bound)
        fast, slow = max(s["seconds"] - 5e-4, 1e-12), s["seconds"] + 5e-4
        assert len(raw) / slow / 1e6 - 5e-4 <= s["mb_per_s"] <= len(raw) / fast / 1e6 + 5e-4, s


def test_folder_without_corpus_files_is_an_error_unless_code(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "table.csv").write_text("a,b\n1,2\n")
    (d / "blob.dat").write_bytes(b"\x00\x01")
    with pytest.raises(InputError, match="no corpus files.*--input-format code"):
        preprocess(str(d), str(tmp_path / "o"), None, small_sp_model(), workers=1, progress=False)
    (d / "tool.py").write_text("print('hi')\n")
    s = preprocess(str(d), str(tmp_path / "o"), None, small_sp_model(), workers=1, progress=False, input_format="code")
    assert s["documents"] == 1 and s["skipped"] == {"unknown_language": 2}  # .csv, .dat
