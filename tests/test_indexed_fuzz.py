"""Corrupt index/data files: every problem is an IndexedFileError naming the file, never another crash."""

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megacrystal.data.indexed import HEADER_SIZE, IndexedDataset, IndexedFileError, write_documents

docs_st = st.lists(st.lists(st.integers(0, 65535), max_size=12), min_size=1, max_size=8)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write(tmp_path, docs, name="d"):
    prefix = str(tmp_path / name)
    write_documents(prefix, docs, dtype=np.uint16)
    return prefix


def _open_and_read_all(prefix):
    """Either a clean IndexedFileError naming a file of the pair, or every sequence is readable."""
    try:
        ds = IndexedDataset(prefix)
    except IndexedFileError as e:
        assert str(e).startswith((prefix + ".idx", prefix + ".bin")), str(e)
        return None
    for i in range(len(ds)):
        assert len(ds[i]) == ds.sequence_lengths[i]
    for k in range(ds.num_documents):
        ds.document(k)
    return ds


@FUZZ
@given(docs=docs_st, data=st.data())
def test_truncated_index_or_data(tmp_path, docs, data):
    prefix = _write(tmp_path, docs)
    which = data.draw(st.sampled_from([".idx", ".bin"]))
    raw = open(prefix + which, "rb").read()
    cut = data.draw(st.integers(0, max(0, len(raw) - 1)))
    if which == ".bin" and not raw:
        return
    open(prefix + which, "wb").write(raw[:cut])
    with pytest.raises(IndexedFileError):
        _open_and_read_all(prefix) or (_ for _ in ()).throw(IndexedFileError("unexpectedly valid"))


@FUZZ
@given(docs=docs_st, data=st.data())
def test_flipped_bytes_in_index(tmp_path, docs, data):
    prefix = _write(tmp_path, docs)
    raw = bytearray(open(prefix + ".idx", "rb").read())
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
    open(prefix + ".idx", "wb").write(bytes(raw))
    ds = _open_and_read_all(prefix)
    if ds is not None:  # a flip that kept every invariant (e.g. inside the document index) is still a valid file
        assert ds.num_tokens * 2 == len(open(prefix + ".bin", "rb").read())


@pytest.mark.parametrize(
    "field,value,match",
    [
        (slice(0, 9), b"MMIDIDY\x00\x00", "bad magic"),
        (slice(9, 17), struct.pack("<Q", 2), "version 2"),
        (slice(17, 18), bytes([9]), "dtype code 9"),
        (slice(17, 18), bytes([4]), "pointers|size"),  # int32: the pointers no longer agree
        (slice(18, 26), struct.pack("<Q", 7), "does not match"),
        (slice(26, 34), struct.pack("<Q", 1), "does not match"),
    ],
)
def test_bad_header_fields(tmp_path, field, value, match):
    prefix = _write(tmp_path, [[1, 2, 3], [4, 5]])
    raw = bytearray(open(prefix + ".idx", "rb").read())
    raw[field] = value
    open(prefix + ".idx", "wb").write(bytes(raw))
    with pytest.raises(IndexedFileError, match=match) as e:
        IndexedDataset(prefix)
    assert prefix in str(e.value)


def test_lengths_disagreeing_with_pointers_and_missing_files(tmp_path):
    prefix = _write(tmp_path, [[1, 2, 3], [4, 5], [6]])
    raw = bytearray(open(prefix + ".idx", "rb").read())
    raw[HEADER_SIZE : HEADER_SIZE + 4] = struct.pack("<i", 2)  # first length 3 -> 2
    raw[HEADER_SIZE + 8 : HEADER_SIZE + 12] = struct.pack("<i", 3)  # keep the token total
    open(prefix + ".idx", "wb").write(bytes(raw))
    with pytest.raises(IndexedFileError, match="pointers"):
        IndexedDataset(prefix)
    with pytest.raises(IndexedFileError, match="nothing.idx: index file not found"):
        IndexedDataset(tmp_path / "nothing")
