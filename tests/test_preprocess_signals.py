"""Workers die with the parent, whatever ends it (SIGTERM, SIGINT, SIGKILL, an exception): no orphan keeps
running or holds the output pipes, nothing is published, and no `.tmp` stays (a SIGKILLed parent cannot
clean up: the next run on the same prefix removes its own leftover names). Real processes, real signals."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from data_tools.preprocess import PreprocessError, preprocess
from tests.data_helpers import ROOT, corpus_texts, small_sp_model, write_jsonl

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """~40 MB of jsonl: minutes of work for two workers, so a signal always lands mid-run."""
    p = tmp_path_factory.mktemp("sig") / "big.jsonl"
    lines = [json.dumps({"text": t}) for t in corpus_texts("code_python") + corpus_texts("prose_pydoc")]
    block = ("\n".join(lines) + "\n").encode()
    with open(p, "wb") as f:
        for _ in range(max(1, (40 << 20) // len(block))):
            f.write(block)
    return str(p)


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d))
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(cond, timeout=240.0):
    """Poll `cond` until it holds (bounded: generous, since a loaded box is slow to start workers)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out")


def _start(src, prefix):
    cmd = [sys.executable, str(ROOT / "tools" / "preprocess_data.py"), "--input", src, "--output-prefix", prefix]
    cmd += ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", small_sp_model(), "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)


def _publish_small(tmp_path, prefix):
    good = write_jsonl(tmp_path / "good.jsonl", ["fine text"] * 5)
    preprocess(good, prefix, None, small_sp_model(), workers=1, progress=False)
    return {e: open(prefix + "_text_document" + e, "rb").read() for e in (".bin", ".idx")}, good


@pytest.mark.parametrize("sig,rc", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_signal_to_parent_leaves_no_worker_and_no_tmp(tmp_path, big_input, sig, rc):
    prefix = str(tmp_path / "out")
    before, good = _publish_small(tmp_path, prefix)
    p = _start(big_input, prefix)
    try:
        workers = _wait(lambda: len(_children(p.pid)) >= 2 and _children(p.pid))
        _wait(lambda: os.path.exists(prefix + "_text_document.bin.tmp"))  # mid-run: writing
        assert p.poll() is None, p.communicate()
        os.kill(p.pid, sig)
        out, err = p.communicate(timeout=60)  # returns only once no process holds the pipes
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == rc, err
    _wait(lambda: not any(_alive(w) for w in workers), timeout=60)
    after = {e: open(prefix + "_text_document" + e, "rb").read() for e in (".bin", ".idx")}
    assert after == before  # nothing published
    tmps = sorted(f for f in os.listdir(tmp_path) if f.endswith(".tmp"))
    if sig == signal.SIGKILL:  # no chance to clean: the next run on the prefix removes its own names
        assert tmps and os.path.exists(prefix + ".preprocess.lock")
        s = preprocess(good, prefix, None, small_sp_model(), workers=2, progress=False)
        assert sorted(os.path.basename(x) for x in s["leftovers_removed"]) == tmps
        assert not [f for f in os.listdir(tmp_path) if f.endswith((".tmp", ".lock"))]
    else:
        assert b"nothing was written" in err and err.decode().count("\n") == 1, err
        assert tmps == [] and not os.path.exists(prefix + ".preprocess.lock")


def test_exception_in_a_worker_stops_all_workers(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", ["fine text"] * 20)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n' * 1000 + b'{"text": broken\n')
    # e.g. multiprocessing's resource tracker, or the rehearsal's worker pool, left by earlier tests
    before, before_mp = set(_children(os.getpid())), set(mp.active_children())
    with pytest.raises(PreprocessError, match=r"bad.jsonl: damaged input at line 1001"):
        preprocess([good, str(bad)], str(tmp_path / "o"), None, small_sp_model(), workers=2, progress=False)
    assert set(mp.active_children()) <= before_mp and set(_children(os.getpid())) <= before
    assert not [f for f in os.listdir(tmp_path) if f.endswith((".tmp", ".lock")) or f.startswith("o_")]


def test_second_run_on_a_busy_prefix_is_refused(tmp_path, big_input):
    prefix = str(tmp_path / "out")
    p = _start(big_input, prefix)
    try:
        _wait(lambda: os.path.exists(prefix + "_text_document.bin.tmp"))
        with pytest.raises(PreprocessError, match="another preprocessing run is writing this output prefix"):
            preprocess(big_input, prefix, None, small_sp_model(), workers=1, progress=False)
        assert os.path.exists(prefix + "_text_document.bin.tmp")  # the live run's files are untouched
    finally:
        os.kill(p.pid, signal.SIGTERM)
        p.communicate(timeout=60)
