"""Kernel verification lives with the user: the record `megacrystal doctor --verify` writes in the user's
cache directory (real files in tmp dirs, XDG_CACHE_HOME set here), what `auto` reads from it, and
`doctor --verify` on a machine without a GPU."""

import json

import pytest
import torch

from megacrystal import doctor
from megacrystal.compiled import record
from megacrystal.compiled.record import RecordError, cache_dir, read_record, record_path, verified, write_record


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "megacrystal"


def _rec(build="abc123", cap="9.0", passed=True, gpu="NVIDIA H200"):
    return dict(build_id=build, capability=cap, gpu=gpu, passed=passed, checks=[])


def test_cache_dir_follows_xdg_else_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "megacrystal"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec: relative paths are ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "megacrystal"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "megacrystal"


def test_written_record_is_read_back_for_its_build_and_capability_only(cache):
    assert verified("abc123", "9.0") is None  # nothing recorded yet
    path = write_record(_rec())
    assert path == cache / "cuda-kernels-abc123-sm9.0.json" and path.parent == cache
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left behind
    assert verified("abc123", "9.0")["gpu"] == "NVIDIA H200"
    assert verified("abc123", "10.0") is None  # another GPU generation: not verified
    assert verified("abd123", "9.0") is None  # other sources: not verified
    assert verified("abc123", None) is None  # no GPU


def test_records_of_other_builds_are_never_touched(cache):
    write_record(_rec("aaa", "9.0"))
    write_record(_rec("aaa", "10.0", gpu="NVIDIA B200"))
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    write_record(_rec("bbb", "9.0", passed=False))
    after = {p.name: p.read_bytes() for p in cache.iterdir()}
    assert {k: after[k] for k in before} == before and len(after) == 3
    assert verified("aaa", "9.0") and verified("aaa", "10.0") and verified("bbb", "9.0") is None
    write_record(_rec("aaa", "9.0", passed=False))  # a new verification of the same pair: latest counts
    assert verified("aaa", "9.0") is None and read_record("aaa", "9.0")["passed"] is False


def test_failed_damaged_or_mismatched_records_do_not_verify(cache):
    path = write_record(_rec(passed=False))
    assert read_record("abc123", "9.0")["passed"] is False and verified("abc123", "9.0") is None
    path.write_text("{not json")
    assert read_record("abc123", "9.0") is None
    path.write_text(json.dumps(_rec(build="other")))  # a file whose content names another build
    assert read_record("abc123", "9.0") is None
    path.write_text(json.dumps(dict(_rec(), passed="yes")))  # only a literal true counts
    assert verified("abc123", "9.0") is None


def test_names_that_are_not_plain_are_refused(cache):
    with pytest.raises(RecordError, match="build id '../x'"):
        record_path("../x", "9.0")
    with pytest.raises(RecordError, match="capability"):
        write_record(dict(build_id="abc", capability=None))
    assert not cache.exists()


def test_auto_reads_the_users_record(cache, monkeypatch):
    from megacrystal.compiled import select

    use, why = select.auto_reason(torch.device("cpu"))
    assert not use and "cpu" in why
    # the reason `auto` gives on a GPU names the user's record file
    assert str(record_path("abc123", "9.0")).startswith(str(cache))
    assert select.verified is record.verified  # select reads exactly this record


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a CUDA GPU")
def test_doctor_verify_without_a_gpu_says_so_and_exits_3(cache, capsys):
    assert doctor.main(["--verify"]) == doctor.EXIT_NO_GPU == 3
    out, err = capsys.readouterr()
    assert out == "" and "no CUDA GPU here" in err and "nothing to verify" in err
    assert not cache.exists()  # nothing recorded


def test_doctor_report_names_the_verification(cache):
    r = doctor.report(torch.device("cpu"))
    assert r["cuda_kernels"]["verified"] is False and r["cuda_kernels"]["record"] is None
