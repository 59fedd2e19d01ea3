"""Damaged, incomplete and interrupted checkpoints: each ends with nothing lost and a one-line report.

Truncated / bit-flipped / deleted shard files, a missing `latest`, a save that never finished, the
old per-rank format, a tampered DCP metadata pickle, a full disk (a patched writer raising ENOSPC,
and a real tmpfs where mounting is allowed), retention, and kill -9 during asynchronous saves."""

from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megacrystal.checkpoint import Checkpointer, load_model_state
from megacrystal.checkpoint.dcp import MetadataError, read_metadata_safely
from megacrystal.checkpoint.files import apply_retention, find_resume_point, verify
from megacrystal.checkpoint.format import CheckpointError, CheckpointSpaceError
from megacrystal.engine.engine import Engine
from tests.parallel_cases import LR, data, make_cfg, split

ROOT = Path(__file__).resolve().parents[1]


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _engine():
    cfg = make_cfg([])
    return cfg, Engine(cfg, torch.device("cpu"))


def _run_with_saves(out: Path, steps, async_save=True):
    cfg, e = _engine()
    ck = Checkpointer(e, out, async_save=async_save)
    states = {}
    for i, b in enumerate(data(steps=max(steps))):
        e.train_step(split(b, 0, 1, cfg.train.micro_batch_size), LR)
        if i + 1 in steps:
            ck.save(i + 1, {"tokens": i + 1})
            states[i + 1] = e.full_model_state()
    ck.close()
    return states


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One run with asynchronous saves at steps 2, 3 and 5 (tests damage copies of it)."""
    out = tmp_path_factory.mktemp("saved") / "run"
    return out, _run_with_saves(out, steps=(2, 3, 5))


def _copy(saved, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(saved[0], out)
    return out


def _shard(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:08d}" / "__0_0.distcp"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no-manifest"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_intact_one(saved, tmp_path, damage):
    out, states = _copy(saved, tmp_path), saved[1]
    shard = _shard(out, 5)
    if damage == "truncate":
        data_ = shard.read_bytes()
        shard.write_bytes(data_[: len(data_) // 2])
    elif damage == "flip":
        raw = bytearray(shard.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        shard.write_bytes(bytes(raw))
    elif damage == "delete":
        shard.unlink()
    else:
        (shard.parent / "manifest.json").unlink()  # what a save killed before its commit leaves
    problem = verify(shard.parent)
    assert problem and "\n" not in problem
    assert str(shard if damage != "no-manifest" else shard.parent / "manifest.json") in problem
    # auto: the newest intact one, with the damaged one named in the log; nothing removed
    seen = _Lines()
    logging.getLogger("megacrystal").addHandler(seen)
    try:
        assert find_resume_point(out) == out / "checkpoints" / "step_00000003"
    finally:
        logging.getLogger("megacrystal").removeHandler(seen)
    assert any("skipping checkpoint step_00000005" in m for m in seen.lines)
    assert shard.parent.is_dir()
    cfg, sd = load_model_state(out)  # offline readers agree
    assert all(torch.equal(sd[k], v) for k, v in states[3].items())
    # a named step stops instead of falling back
    with pytest.raises(CheckpointError, match="step_00000005"):
        find_resume_point(out, "step_00000005")


def test_missing_latest_resumes_from_the_newest_by_scanning_and_deletes_nothing(saved, tmp_path):
    out = _copy(saved, tmp_path)
    (out / "checkpoints" / "latest").unlink()
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert find_resume_point(out) == out / "checkpoints" / "step_00000005"
    _, e = _engine()
    meta = Checkpointer(e, out, async_save=False).load(out / "checkpoints" / "step_00000005")
    assert meta["step"] == 5 and e.optimizer.step_count == 5
    assert all(torch.equal(v, saved[1][5][k]) for k, v in e.full_model_state().items())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_leftover_tmp_and_old_format_are_never_taken_for_checkpoints(saved, tmp_path):
    out = _copy(saved, tmp_path)
    root = out / "checkpoints"
    (root / "step_00000009.tmp").mkdir()  # a save killed mid-write
    assert find_resume_point(out) == root / "step_00000005"
    old = root / "step_00000010"
    old.mkdir()
    (old / "shard_tp0_pp0_dp0.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"old per-rank format.*train.init_from=.*step_00000010/model"):
        find_resume_point(out)


def test_a_tampered_metadata_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(MetadataError, match="posix.system|os.system"):
        read_metadata_safely(pickle.dumps(Evil()))
    assert not marker.exists()
    buf = io.BytesIO()
    pickle.dump({"not": "metadata"}, buf)
    with pytest.raises(MetadataError):
        read_metadata_safely(buf.getvalue())


def _fail_after(limit: int):
    """A FileSystem.create_stream that raises ENOSPC once `limit` bytes were written to data files."""
    from torch.distributed.checkpoint.filesystem import FileSystem

    orig = FileSystem.create_stream
    written = [0]

    class Full(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def write(self, b):
            written[0] += len(b)
            if written[0] > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def writable(self):
            return True

        def tell(self):
            return self.f.tell()

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()

    from contextlib import contextmanager

    @contextmanager
    def create_stream(self, path, mode):
        with orig(self, path, mode) as f:
            yield Full(f) if "w" in mode and str(path).endswith(".distcp") else f

    return create_stream


def test_full_disk_names_the_path_removes_the_partial_write_and_keeps_the_previous(tmp_path, monkeypatch):
    from torch.distributed.checkpoint.filesystem import FileSystem

    out = tmp_path / "run"
    cfg, e = _engine()
    ck = Checkpointer(e, out, async_save=True)
    b = data(steps=2)
    e.train_step(split(b[0], 0, 1, 2), LR)
    ck.save(1, {})
    ck.wait()
    e.train_step(split(b[1], 0, 1, 2), LR)
    monkeypatch.setattr(FileSystem, "create_stream", _fail_after(20_000))
    ck.save(2, {})  # asynchronous: the error comes with the next wait
    with pytest.raises(CheckpointSpaceError) as err:
        ck.wait()
    msg = str(err.value)
    assert "\n" not in msg and "step_00000002.tmp" in msg and "no space left" in msg and "MiB free" in msg
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001"]
    assert (root / "latest").read_text() == "step_00000001" and verify(root / "step_00000001") is None


def test_full_disk_on_a_real_tmpfs(tmp_path):
    cfg, e = _engine()
    Checkpointer(e, tmp_path / "probe", async_save=False).save(1, {})
    size = sum(f.stat().st_size for f in (tmp_path / "probe" / "checkpoints" / "step_00000001").iterdir())
    mnt = tmp_path / "small"
    mnt.mkdir()
    room = f"size={int(size * 1.5) // 4096 * 4096 + 4096}"  # one checkpoint fits, two do not
    if subprocess.run(["mount", "-t", "tmpfs", "-o", room, "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not allowed here (the patched-writer test covers ENOSPC)")
    try:
        ck = Checkpointer(e, mnt / "run", async_save=False)
        ck.save(1, {})
        with pytest.raises(CheckpointSpaceError, match=r"step_00000002.tmp: no space left .* MiB free"):
            ck.save(2, {})
        root = mnt / "run" / "checkpoints"
        assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001"]
        assert (root / "latest").read_text() == "step_00000001" and verify(root / "step_00000001") is None
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_retention_keeps_the_newest_every_kth_and_the_protected(saved, tmp_path):
    root = _copy(saved, tmp_path) / "checkpoints"
    for step in (1, 4, 6):  # more complete checkpoints (copies: retention goes by name)
        shutil.copytree(root / "step_00000005", root / f"step_{step:08d}")
    (root / "step_00000007").mkdir()  # incomplete: never counted, never removed
    removed = apply_retention(root, keep=2, keep_every=3, protect=(root / "step_00000001",))
    assert sorted(p.name for p in removed) == ["step_00000002", "step_00000004"]
    left = sorted(p.name for p in root.iterdir() if p.name.startswith("step_"))
    assert left == ["step_00000001", "step_00000003", "step_00000005", "step_00000006", "step_00000007"]


def test_kill_9_during_async_saves_leaves_only_intact_checkpoints(tmp_path):
    """SIGKILL a training process paused by a test hook (tests/checkpoint_kill_child.py) at each point
    of an asynchronous save in turn: every committed checkpoint stays intact and the next start resumes
    from the newest committed one (the paused save's own when only `latest` was left to write)."""
    from tests.checkpoint_kill_child import POINTS

    out = tmp_path / "run"
    root = out / "checkpoints"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    start = 0
    for i, point in enumerate(POINTS):
        nth = 2 - i % 2  # a save after a committed one of the same run, or the first save after a restart
        p = subprocess.Popen(
            [sys.executable, "-m", "tests.checkpoint_kill_child", str(out), point, str(nth)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            paused = next((line for line in p.stdout if line.startswith("paused")), None)
        finally:
            os.killpg(p.pid, signal.SIGKILL)
            _, err = p.communicate(timeout=120)
        step = start + nth
        assert paused == f"paused {point} {step}\n", (paused, err[-2000:])
        assert (root / f"step_{step:08d}.tmp").is_dir() == (point != "latest")  # killed inside the write
        names = [d.name for d in root.iterdir() if d.name.startswith("step_") and not d.name.endswith(".tmp")]
        for n in names:
            assert verify(root / n) is None, n  # every committed checkpoint is intact
        assert verify(root / (root / "latest").read_text()) is None
        start = step if point == "latest" else step - 1
        assert find_resume_point(out) == root / f"step_{start:08d}", point  # the newest committed one


def test_every_checkpoint_read_in_the_package_is_weights_only():
    """No torch.load without weights_only=True and no bare pickle.load anywhere in megacrystal/ (DCP's
    tensor reads are weights_only; its metadata goes through the allow-list unpickler)."""
    import re

    bad = []
    for path in (ROOT / "megacrystal").rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            call = text[m.start() : i]
            if "weights_only=True" not in call:
                bad.append(f"{path.relative_to(ROOT)}: {call}")
        for m in re.finditer(r"pickle\.loads?\(", text):
            bad.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert not bad, bad
