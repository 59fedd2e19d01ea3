"""`python -m megacrystal.train` with test hooks that put a crash or a signal at a defined point
(tests/test_preemption.py), so no test races a clock.

    HOOK_OUT=RUN_DIR HOOK_KILL_AT_SAVE=1:4 torchrun ... -m tests.train_hook_child --config C.yaml
    HOOK_HOLD_STOP=1 python -m tests.train_hook_child --config C.yaml

HOOK_KILL_AT_SAVE=RANK:STEP: on that rank, when the trainer asks for the checkpoint of STEP, wait until
every earlier checkpoint is committed (the writer's closing barrier: on every rank) and rank 0 has logged
STEP in metrics.jsonl, write that line to RUN_DIR/fault.json and SIGKILL this process before it
contributes to that checkpoint, which therefore can never be committed: the restart resumes from the
last checkpoint before STEP. Once fault.json exists (the restarted workers) nothing is patched.

HOOK_HOLD_STOP=1: a stop (SIGTERM / first SIGINT), once its step is done and its checkpoint saved, says
`test hook: holding the stop` on stderr and waits (up to 300 s) before it closes the checkpointer and
exits, so a second signal surely arrives while the run is stopping.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from megacrystal.checkpoint import Checkpointer
from megacrystal.train.main import main


def _metrics_line(out: Path, step: int, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = out / "metrics.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line) if line.endswith("}") else {}
                if row.get("step") == step:
                    return row
        time.sleep(0.02)
    raise TimeoutError(f"rank 0 did not log step {step} within {timeout} s")


def kill_at_save(out: Path, rank: int, step: int) -> None:
    marker = out / "fault.json"
    if int(os.environ.get("RANK", "0")) != rank or marker.exists():
        return
    save = Checkpointer.save

    def faulty_save(self, at_step, *args, **kwargs):
        if at_step == step:
            self.wait()  # every earlier save committed on every rank
            row = _metrics_line(out, step)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(row))
            tmp.rename(marker)
            os.kill(os.getpid(), signal.SIGKILL)
        return save(self, at_step, *args, **kwargs)

    Checkpointer.save = faulty_save


def hold_stop() -> None:
    close = Checkpointer.close

    def held_close(self):
        print("test hook: holding the stop", file=sys.stderr, flush=True)
        threading.Event().wait(300)
        return close(self)

    Checkpointer.close = held_close


if __name__ == "__main__":
    if os.environ.get("HOOK_KILL_AT_SAVE"):
        rank, step = os.environ["HOOK_KILL_AT_SAVE"].split(":")
        kill_at_save(Path(os.environ["HOOK_OUT"]), int(rank), int(step))
    if os.environ.get("HOOK_HOLD_STOP"):
        hold_stop()
    sys.exit(main())
