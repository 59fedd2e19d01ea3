import gzip
import json
import os
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools.inputs import InputError, expand_inputs
from data_tools.readers import iter_documents, iter_tasks, load_task
from data_tools.streams import DamagedInput
from tests.data_helpers import corpus_texts, write_jsonl

DOCS = corpus_texts("code_python")[:12] + corpus_texts("prose_pydoc")[:12]


def _lines(docs):
    return "".join(json.dumps({"text": d, "n": i}) + "\n" for i, d in enumerate(docs)).encode()


def test_jsonl_plain_gz_zst_parquet_agree(tmp_path):
    raw = _lines(DOCS)
    (tmp_path / "a.jsonl").write_bytes(raw)
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(raw)
    # two zstd frames back to back (as concatenated shards are)
    c = zstandard.ZstdCompressor()
    (tmp_path / "c.jsonl.zst").write_bytes(c.compress(raw[: len(raw) // 2]) + c.compress(raw[len(raw) // 2 :]))
    pq.write_table(pa.table({"text": DOCS, "n": list(range(len(DOCS)))}), tmp_path / "d.parquet", row_group_size=5)
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet"):
        assert list(iter_documents(str(tmp_path / name))) == DOCS, name
    # a directory of shards reads them all, sorted by name
    assert list(iter_documents(str(tmp_path))) == DOCS * 4
    assert list(iter_documents(str(tmp_path / "*.jsonl*"))) == DOCS * 3


def test_parquet_streams_by_row_group(tmp_path):
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "d.parquet", row_group_size=5)
    tasks = list(iter_tasks(expand_inputs(str(tmp_path / "d.parquet"))))
    assert [t.row_group for t in tasks] == list(range((len(DOCS) + 4) // 5))


def test_bad_lines_are_skipped_and_counted(tmp_path):
    p = tmp_path / "bad.jsonl"
    good = ["first good", "second good", "third good"]
    p.write_bytes(
        b"".join(
            [
                json.dumps({"text": good[0]}).encode() + b"\n",
                b"{not json\n",
                json.dumps({"other": "x"}).encode() + b"\n",
                b'{"text": "caf\xe9 latin-1"}\n',  # not UTF-8
                b"[1, 2]\n",  # not an object
                json.dumps({"text": 42}).encode() + b"\n",  # not a string
                json.dumps({"text": ""}).encode() + b"\n",  # empty
                json.dumps({"text": None}).encode() + b"\n",  # null counts as missing
                b"\n   \n",  # blank lines are ignored
                json.dumps({"text": good[1]}).encode() + b"\n",
                json.dumps({"text": good[2]}).encode(),  # last line without newline
            ]
        )
    )
    stats = Counter()
    assert list(iter_documents(str(p), stats=stats, skip_bad_lines=True)) == good
    assert stats == Counter(invalid_json=1, missing_key=2, not_utf8=1, not_object=1, not_string=1, empty=1)
    # by default a line that is not UTF-8 / not JSON is damage: the first one is named
    with pytest.raises(DamagedInput, match=r"bad.jsonl: damaged input at line 2 \(byte 23\): invalid JSON"):
        list(iter_documents(str(p)))


def test_multiple_keys_stay_aligned(tmp_path):
    p = write_jsonl(tmp_path / "k.jsonl", [{"text": "a", "code": "b"}, {"text": "c"}, {"text": "e", "code": "f"}])
    task = next(iter_tasks(expand_inputs(p)))
    out, stats = load_task(task, ("text", "code"))
    assert out == {"text": ["a", "e"], "code": ["b", "f"]}
    assert stats == Counter(missing_key=1)


@settings(max_examples=25, deadline=None)
@given(chunk=st.integers(1, 400), docs=st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=20))
def test_chunking_never_splits_a_line(tmp_path_factory, chunk, docs):
    p = tmp_path_factory.mktemp("chunk") / "c.jsonl"
    p.write_bytes(_lines(docs))
    got = []
    for t in iter_tasks(expand_inputs(str(p)), chunk_bytes=chunk):
        got += load_task(t)[0]["text"]
    assert got == [d for d in docs]


def test_code_tree_languages_and_skips(tmp_path):
    tree = tmp_path / "repo"
    (tree / "pkg").mkdir(parents=True)
    (tree / ".git").mkdir()
    (tree / ".git" / "config").write_text("[core]\n")
    (tree / "pkg" / "a.py").write_text(DOCS[0])
    (tree / "pkg" / "b.c").write_text("int main(void) { return 0; }\n")
    (tree / "pkg" / "style.css").write_text("body { color: red; }\n")
    (tree / "Makefile").write_text("all:\n\techo hi\n")
    (tree / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    (tree / "data.py").write_bytes(b"x = 1\x00\x01binary")
    (tree / "big.py").write_text("# big\n" * 300_000)
    (tree / "latin1.py").write_bytes(b"s = '\xe9'\n")
    stats = Counter()
    with pytest.raises(InputError, match="no corpus files.*--input-format code"):
        expand_inputs(str(tree))
    got = list(iter_documents(str(tree), fmt="code", stats=stats, with_meta=True))
    langs = {os.path.relpath(m["path"], tree): m["language"] for _, m in got}
    assert langs == {"Makefile": "makefile", "pkg/a.py": "python", "pkg/b.c": "c", "pkg/style.css": "css"}
    assert got[1][0] == DOCS[0]
    assert stats == Counter(binary=1, too_large=1, not_utf8=1, unknown_language=1)


def test_text_files_one_document_each(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\nbeta\n")
    (tmp_path / "b.md").write_text("# title\n\nbody\n")
    assert list(iter_documents(str(tmp_path))) == ["alpha\nbeta\n", "# title\n\nbody\n"]


def test_directory_skips_plain_json_metadata(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ["x"])
    (tmp_path / "summary.json").write_text('{\n "documents": 1\n}\n')
    assert list(iter_documents(str(tmp_path))) == ["x"]


def test_input_errors_name_the_input(tmp_path):
    with pytest.raises(InputError, match="nope"):
        expand_inputs(str(tmp_path / "nope*.jsonl"))
    (tmp_path / "x.bin").write_bytes(b"\x00")
    with pytest.raises(InputError, match="x.bin: unknown corpus format"):
        expand_inputs(str(tmp_path / "x.bin"))
    (tmp_path / "broken.jsonl.gz").write_bytes(gzip.compress(_lines(DOCS))[:200])
    with pytest.raises(ValueError, match="broken.jsonl.gz"):
        list(iter_documents(str(tmp_path / "broken.jsonl.gz")))
