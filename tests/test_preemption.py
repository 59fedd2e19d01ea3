"""Stops and failures of real training processes: SIGTERM / SIGINT (real signals) finish the step,
save and exit 75; a second SIGINT exits at once; ranks agree on the step to stop at; a rank killed
with SIGKILL under `torchrun --max-restarts` is restarted and the run resumes from the newest
checkpoint; the step watchdog turns a stalled rank into an error naming the step and the rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from megacrystal.train import exit_codes
from tests.test_train_loop import ROOT, data_dir, read_metrics, run_config, train_cli  # noqa: F401 (fixture)

LONG = ["data.phases.0.steps=400", "train.eval_interval=0"]  # far more steps than a test waits for


class Proc:
    """A training process (or torchrun) in its own session, its stderr collected by a thread."""

    def __init__(
        self, args: list[str], torchrun: int = 0, restarts: int = 0, module: str = "megacrystal.train", env=None
    ):
        env = dict(
            os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", **(env or {})
        )
        if torchrun:
            launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)]
            launch += ["--max-restarts", str(restarts), "--monitor-interval", "0.5"]
            cmd = [sys.executable, *launch, "-m", module, *args]
        else:
            cmd = [sys.executable, "-m", module, *args]
        self.p = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.p.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def err(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, cond, what: str, timeout: float = 240.0):
        deadline = time.monotonic() + timeout
        while not cond():
            if self.p.poll() is not None:
                raise AssertionError(f"exited ({self.p.returncode}) before {what}:\n{self.err[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.err[-3000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float = 240.0) -> int:
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"did not exit within {timeout} s:\n{self.err[-3000:]}") from None
        self._t.join(10)
        return self.p.returncode

    def kill(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def workers(self) -> dict[int, int]:
        """torchrun's worker processes: {RANK: pid}."""
        out = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid != self.p.pid:
                    continue
                env = dict(kv.split("=", 1) for kv in (d / "environ").read_bytes().decode().split("\0") if "=" in kv)
            except (OSError, ValueError, IndexError):
                continue
            if "RANK" in env:
                out[int(env["RANK"])] = int(d.name)
        return out


def logged_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigterm_finishes_the_step_saves_and_exits_75_then_the_run_resumes(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "term"
    cfg = run_config(data_dir, out)
    proc = Proc(["--config", str(cfg), *LONG])
    proc.wait_for(lambda: logged_steps(out) >= 2, "two steps")
    proc.p.send_signal(signal.SIGTERM)
    assert proc.finish() == exit_codes.PREEMPTED, proc.err[-3000:]
    rows = read_metrics(out)
    n = rows[-1]["step"]
    assert [r["step"] for r in rows] == list(range(1, n + 1)) and 2 <= n < 400
    assert (out / "checkpoints" / "latest").read_text() == f"step_{n:08d}"  # the step it was in when signalled
    last = proc.lines[-1]
    assert last.startswith(f"megacrystal train: stopped by SIGTERM after step {n};") and "(exit 75)" in last, last
    assert "Traceback" not in proc.err
    # the same command again resumes there
    assert train_cli(["--config", str(cfg), *LONG, f"train.max_steps={n + 2}"]) == 0
    assert [r["step"] for r in read_metrics(out)] == list(range(1, n + 3))


def test_a_second_sigint_exits_at_once(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "int"
    cfg = run_config(data_dir, out)
    # the stop is held open by a test hook (tests/train_hook_child.py): the second SIGINT surely lands in it
    proc = Proc(
        ["--config", str(cfg), *LONG, "train.save_interval=1"],
        module="tests.train_hook_child",
        env=dict(HOOK_HOLD_STOP="1"),
    )
    proc.wait_for(lambda: (out / "checkpoints" / "latest").exists(), "a first checkpoint")
    proc.p.send_signal(signal.SIGINT)
    proc.wait_for(lambda: any("SIGINT received" in x for x in proc.lines), "the first SIGINT noticed")
    proc.wait_for(lambda: any("test hook: holding the stop" in x for x in proc.lines), "the stop in progress")
    proc.p.send_signal(signal.SIGINT)
    assert proc.finish() == exit_codes.INTERRUPTED, proc.err[-3000:]
    assert "second SIGINT: exiting now without saving" in proc.lines[-1]
    # nothing lost: `latest` names a complete checkpoint
    ck = out / "checkpoints"
    assert (ck / (ck / "latest").read_text() / "trainer.json").is_file()


def test_ranks_agree_on_the_stop_when_one_rank_gets_a_sigint(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "agree"
    cfg = run_config(data_dir, out)
    proc = Proc(["--config", str(cfg), *LONG], torchrun=2)
    proc.wait_for(lambda: logged_steps(out) >= 2, "two steps")
    os.kill(proc.workers()[1], signal.SIGINT)  # rank 1 only; a first SIGINT stops like SIGTERM
    proc.finish()  # torchrun reports its workers' exit 75 as a failure
    n = read_metrics(out)[-1]["step"]
    assert f"stopped by SIGINT after step {n};" in proc.err, proc.err[-3000:]  # rank 1
    assert f"stopped by a signal to another rank after step {n};" in proc.err  # rank 0, the same step
    assert (out / "checkpoints" / "latest").read_text() == f"step_{n:08d}"
    assert "exitcode  : 75" in proc.err  # torchrun saw the workers stop after saving


def test_a_rank_killed_under_torchrun_max_restarts_resumes_from_the_last_checkpoint(data_dir, tmp_path):  # noqa: F811
    """Rank 1 SIGKILLs itself at a defined point (tests/train_hook_child.py): when step 4's checkpoint is
    asked for, once step 3's is committed and rank 0 has logged step 4, before it contributes to step 4's
    (which so can never commit). torchrun restarts both ranks; they resume from step 3, no clock involved."""
    out = tmp_path / "kill9"
    cfg = run_config(data_dir, out, save_interval=3, eval_interval=0)
    hook = dict(HOOK_OUT=str(out), HOOK_KILL_AT_SAVE="1:4")
    proc = Proc(["--config", str(cfg)], torchrun=2, restarts=1, module="tests.train_hook_child", env=hook)
    assert proc.finish() == 0, proc.err[-3000:]
    before_kill = json.loads((out / "fault.json").read_text())  # step 4 as logged before the kill
    resumed = [x for x in proc.lines if "resumed from" in x]
    assert len(resumed) == 2 and all("step_00000003 at step 3" in x for x in resumed), proc.err[-3000:]
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))  # one line per step, none lost
    assert (out / "checkpoints" / "latest").read_text() == "step_00000008"
    # step 4 ran twice, before the kill and after the restart: the same loss (exact resume)
    assert before_kill["step"] == 4 and rows[3]["loss"] == before_kill["loss"], (rows[3], before_kill)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_the_step_watchdog_names_the_step_and_the_rank(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "stall"
    cfg = run_config(data_dir, out)
    proc = Proc(["--config", str(cfg), *LONG, "train.step_timeout_s=8"], torchrun=2)
    proc.wait_for(lambda: logged_steps(out) >= 2, "two steps")
    workers = proc.workers()
    stalled = workers[1]
    os.kill(stalled, signal.SIGSTOP)  # rank 1 stops answering; rank 0 waits in a collective
    try:
        fired = lambda: any("watchdog: step" in x for x in proc.lines) and not _running(workers[0])
        proc.wait_for(fired, "rank 0's watchdog to fire and end it")
        os.kill(stalled, signal.SIGKILL)  # what torchrun does to the stopped rank after its 30 s grace
        proc.finish()
    finally:
        for s in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.kill(stalled, s)
            except ProcessLookupError:
                pass
    n = read_metrics(out)[-1]["step"]
    assert f"watchdog: step {n + 1} on rank 0 has run" in proc.err, proc.err[-3000:]
    assert "train.step_timeout_s=8" in proc.err and "exitcode  : 4" in proc.err


def _start_with_a_pending_sigterm(cfg_path, overrides):
    """`train` as the CLI runs it, with a real SIGTERM delivered after the handlers are installed and
    before the first step (the start-up window: data, process groups, checkpoint loading)."""
    from megacrystal.config import load_config
    from megacrystal.train.loop import _train
    from megacrystal.train.preemption import StopSignals
    from megacrystal.train.watchdog import StepWatchdog

    cfg = load_config(str(cfg_path), overrides)
    stop, dog = StopSignals(), StepWatchdog(0)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 120  # bounded; the handler notes the signal at once
        while stop.signum is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.signum == signal.SIGTERM
        return _train(cfg, stop, dog)
    finally:
        dog.close()
        stop.uninstall()


def test_a_sigterm_during_start_up_stops_before_the_first_step_and_loses_nothing(data_dir, tmp_path):  # noqa: F811
    from megacrystal.train.preemption import StopRequested

    out = tmp_path / "startup"
    cfg = run_config(data_dir, out)
    with pytest.raises(StopRequested, match=r"^stopped by SIGTERM before the first step; nothing to save$"):
        _start_with_a_pending_sigterm(cfg, [])
    assert logged_steps(out) == 0 and not (out / "checkpoints").exists()
    # a run with a checkpoint at step 3, then a restart signalled during its start-up
    assert train_cli(["--config", str(cfg), "train.max_steps=3"]) == 0
    ckpts = out / "checkpoints"
    before = {p.relative_to(ckpts): p.stat().st_mtime_ns for p in ckpts.rglob("*")}
    rows = read_metrics(out)
    with pytest.raises(StopRequested, match=r"^stopped by SIGTERM after step 3; its checkpoint is in "):
        _start_with_a_pending_sigterm(cfg, ["train.max_steps=6"])
    assert {p.relative_to(ckpts): p.stat().st_mtime_ns for p in ckpts.rglob("*")} == before
    assert read_metrics(out) == rows and (ckpts / "latest").read_text() == "step_00000003"
