"""The study's runs as jobs: what each run needs (train, then eval), what is already done, and a small
scheduler that keeps `n` of them going as separate processes, each with a bounded time.

A run counts as trained when its newest checkpoint is at the config's last step, and as evaluated
when every checkpoint it kept has its result with the study's eval settings
(RUN/eval/step_N-<settings fingerprint>.json, written by `megacrystal eval --all`); finished work is
never redone, a half-trained run resumes from its checkpoint (the trainer does that by itself), a
half-evaluated one scores only what is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Job:
    name: str  # variant/seedN
    run_dir: Path
    config: Path
    total_steps: int
    eval_args: list
    launcher: list = field(default_factory=list)  # e.g. [torchrun, --nproc-per-node, 8]; default this python
    status: str = "todo"  # todo | trained | done | failed
    seconds: float = 0.0
    error: str | None = None
    steps: list = field(default_factory=list)  # (what, argv) still to run: what is "train" or "eval"

    def trained_step(self) -> int | None:
        marker = self.run_dir / "checkpoints" / "latest"
        if not marker.is_file():
            return None
        trainer = self.run_dir / "checkpoints" / marker.read_text().strip() / "trainer.json"
        try:
            return int(json.loads(trainer.read_text())["step"])
        except (OSError, ValueError, KeyError):
            return None

    def eval_files(self) -> list[Path]:
        """The result files `eval --all` writes for the checkpoints the run kept (none before it has one)."""
        from ..checkpoint.files import kept_checkpoints
        from ..checkpoint.format import CheckpointError
        from ..evaluation.command import build_parser, resolve_precision, scoring_settings
        from ..evaluation.results import report_path, settings_fingerprint

        try:
            a = build_parser().parse_args(["--checkpoint", str(self.run_dir), "--all", *self.eval_args])
        except SystemExit:  # argparse has printed what is wrong
            raise ValueError(f"eval_args {self.eval_args}: not valid `megacrystal eval` arguments") from None
        fp = settings_fingerprint(scoring_settings(a, resolve_precision(a)))
        try:
            kept = kept_checkpoints(self.run_dir)
        except CheckpointError:
            return []
        return [report_path(self.run_dir, step, fp) for step, _ in kept]

    def plan(self) -> None:
        """Decide what is left to do."""
        cli = [*(self.launcher or [sys.executable]), "-m", "megacrystal.cli"]
        self.steps = []
        if self.trained_step() != self.total_steps:
            self.steps.append(("train", [*cli, "train", "--config", str(self.config)]))
        files = self.eval_files()
        if self.steps or not files or not all(f.is_file() for f in files):
            argv = [*cli, "eval", "--checkpoint", str(self.run_dir), "--all", "--no-progress", *self.eval_args]
            self.steps.append(("eval", argv))
        whats = [w for w, _ in self.steps]
        self.status = "done" if not whats else ("trained" if whats == ["eval"] else "todo")


def run_jobs(jobs: list[Job], n: int, threads: int, timeout_s: float, log=print) -> None:
    """Run the jobs' remaining steps, `n` jobs at a time; each job's steps in order, its output in
    RUN/study.log. A job over `timeout_s` is stopped (its process group) and marked failed."""
    pending = [j for j in jobs if j.steps]
    running: dict[int, tuple] = {}  # pid -> (job, proc, start, logfile)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")] if p
    )

    def start(job: Job, t0: float):
        job.run_dir.mkdir(parents=True, exist_ok=True)
        logf = open(job.run_dir / "study.log", "a")
        what, argv = job.steps.pop(0)
        logf.write(f"\n$ {' '.join(argv)}\n")
        logf.flush()
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        running[proc.pid] = (job, proc, t0, logf)
        log(f"study: {job.name}: {what} (pid {proc.pid})")

    while pending or running:
        while pending and len(running) < n:
            start(pending.pop(0), time.monotonic())
        time.sleep(0.5)
        for pid, (job, proc, t0, logf) in list(running.items()):
            rc = proc.poll()
            elapsed = time.monotonic() - t0
            if rc is None and elapsed > timeout_s:
                os.killpg(proc.pid, 15)
                try:
                    rc = proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    rc = proc.wait(30)
                job.error = f"stopped after {timeout_s:.0f} s (study job_timeout_s)"
            if rc is None:
                continue
            del running[pid]
            logf.close()
            if rc != 0:
                job.status, job.seconds = "failed", elapsed
                job.error = job.error or f"exit code {rc}; see {job.run_dir / 'study.log'}"
                log(f"study: {job.name}: FAILED ({job.error})")
            elif job.steps:
                start(job, t0)
            else:
                job.status, job.seconds = "done", elapsed
                log(f"study: {job.name}: done in {elapsed:.0f} s")
