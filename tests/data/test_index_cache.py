"""The .npy index cache: hit, foreign/stale detection, rank 0 builds on real gloo ranks."""

import json
import os

import numpy as np
import pytest

from megacrystal.data import index_cache
from megacrystal.data.gpt_dataset import GPTIndex
from megacrystal.data.indexed import IndexedDataset
from tests.dist import run_ranks

from .conftest import write_random


def _build_counter(path, value=7):
    def build():
        with open(path, "a") as f:
            f.write("x")
        return {"a": np.arange(10, dtype=np.int32) * value, "b": np.ones((3, 2))}, {"value": value}

    return build


def test_hit_is_memory_mapped_and_not_rebuilt(tmp_path):
    marker = tmp_path / "builds"
    desc = {"x": 1}
    a1, m1 = index_cache.cached("t", desc, _build_counter(marker), str(tmp_path / "c"))
    a2, m2 = index_cache.cached("t", desc, _build_counter(marker), str(tmp_path / "c"))
    assert marker.read_text() == "x"
    assert isinstance(a2["a"], np.memmap) and m2 == {"value": 7}
    np.testing.assert_array_equal(a1["a"], a2["a"])


def test_other_inputs_other_files(tmp_path):
    marker = tmp_path / "builds"
    index_cache.cached("t", {"x": 1}, _build_counter(marker), str(tmp_path))
    a, _ = index_cache.cached("t", {"x": 2}, _build_counter(marker, 3), str(tmp_path))
    assert marker.read_text() == "xx" and int(a["a"][1]) == 3


def _files(d, suffix):
    return [os.path.join(d, f) for f in os.listdir(d) if f.endswith(suffix)]


def test_foreign_description_is_rebuilt(tmp_path, caplog):
    marker, c = tmp_path / "builds", str(tmp_path / "c")
    index_cache.cached("t", {"x": 1}, _build_counter(marker), c)
    (desc_file,) = _files(c, "description.json")
    rec = json.loads(open(desc_file).read())
    rec["description"]["x"] = 99  # someone else's cache under this name
    open(desc_file, "w").write(json.dumps(rec))
    with pytest.raises(index_cache.IndexCacheError, match="foreign"):
        index_cache.load(c, "t", {"format": 1, "kind": "t", "x": 1})
    a, _ = index_cache.cached("t", {"x": 1}, _build_counter(marker), c)
    assert marker.read_text() == "xx"
    assert "foreign" in caplog.text


def test_damaged_array_is_detected_and_rebuilt(tmp_path, caplog):
    marker, c = tmp_path / "builds", str(tmp_path / "c")
    index_cache.cached("t", {"x": 1}, _build_counter(marker), c)
    (f,) = [p for p in _files(c, ".npy") if p.endswith("-a.npy")]
    np.save(f, np.arange(4, dtype=np.int64))  # wrong shape and dtype
    with pytest.raises(index_cache.IndexCacheError, match="stale or damaged"):
        index_cache.load(c, "t", {"format": 1, "kind": "t", "x": 1})
    a, _ = index_cache.cached("t", {"x": 1}, _build_counter(marker), c)
    assert marker.read_text() == "xx" and a["a"].shape == (10,)
    open(f, "wb").write(b"garbage")
    a, _ = index_cache.cached("t", {"x": 1}, _build_counter(marker), c)
    assert marker.read_text() == "xxx" and int(a["a"][2]) == 14


def test_changed_dataset_is_not_served_from_old_cache(tmp_path):
    prefix = str(tmp_path / "d")
    write_random(prefix, 30, 20, 1)
    old = GPTIndex(IndexedDataset(prefix), np.arange(30), 8, 50, 1, cache_dir=str(tmp_path / "c"))
    old_arrays = [np.array(a) for a in (old.document_index, old.sample_index)]
    write_random(prefix, 30, 20, 2)  # same name, other content
    new = GPTIndex(IndexedDataset(prefix), np.arange(30), 8, 50, 1, cache_dir=str(tmp_path / "c"))
    assert new.description != old.description
    assert not np.array_equal(old_arrays[1], np.asarray(new.sample_index))


def _rank_fn(rank, world, cache_dir, prefix, marker_dir):
    def build():
        open(os.path.join(marker_dir, f"built-by-{rank}"), "w").close()
        return {"a": np.arange(5, dtype=np.int64) + 1}, {}

    arrays, _ = index_cache.cached("t", {"x": 1}, build, cache_dir)
    ix = GPTIndex(IndexedDataset(prefix), np.arange(40), 8, 100, 3, cache_dir=cache_dir)
    return int(arrays["a"].sum()), np.asarray(ix.shuffle_index).tolist(), type(ix.sample_index).__name__


def _failing_rank_fn(rank, world, cache_dir):
    def build():
        raise RuntimeError("disk full")

    try:
        index_cache.cached("t", {"x": 2}, build, cache_dir)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def test_rank0_builds_others_wait_and_map(tmp_path):
    prefix = write_random(str(tmp_path / "d"), 40, 30, 4)
    cache, markers = str(tmp_path / "c"), str(tmp_path / "m")
    os.makedirs(markers)
    results = run_ranks(_rank_fn, 2, args=(cache, prefix, markers), timeout=120)
    assert os.listdir(markers) == ["built-by-0"]
    assert results[0] == results[1]
    assert results[1][2] == "memmap"
    errors = run_ranks(_failing_rank_fn, 2, args=(cache,), timeout=120)
    assert errors[0] == "RuntimeError: disk full"
    assert "rank 0 of the group failed" in errors[1]
