"""The step watchdog: a step that takes longer than `train.step_timeout_s` ends the process.

    dog = StepWatchdog(cfg.train.step_timeout_s, rank)   # 0: off (no thread); rank may be set later
    dog.start(step); ...the step...; dog.stop()
    dog.close()

A thread checks the running step's age. Past the limit it prints one line naming the step and the
rank, the Python stacks of this process (where it is stuck), and exits with
`exit_codes.STALLED` (4) at once, closing this rank's connections. Every rank runs its own
watchdog, so when one rank stalls the others, blocked in a collective with it, fail too, each
naming itself, instead of waiting silently for the collective timeout (`parallel.timeout_s`).
Under torchrun `--max-restarts N` the group is then restarted from the newest checkpoint.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time

from . import exit_codes


class StepWatchdog:
    def __init__(self, timeout_s: float, rank: int = 0):
        self.timeout_s = float(timeout_s)
        self.rank = rank
        self._step: int | None = None
        self._since = 0.0
        self._done = threading.Event()
        self._thread = None
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="megacrystal-watchdog", daemon=True)
            self._thread.start()

    def start(self, step: int) -> None:
        self._since = time.monotonic()
        self._step = step

    def stop(self) -> None:
        self._step = None

    def _watch(self) -> None:
        period = min(1.0, max(self.timeout_s / 4, 0.001))
        while not self._done.wait(period):
            step, since = self._step, self._since
            if step is None:
                continue
            age = time.monotonic() - since
            if age > self.timeout_s:
                self._fire(step, age)

    def _fire(self, step: int, age: float) -> None:
        sys.stderr.write(
            f"megacrystal: watchdog: step {step} on rank {self.rank} has run {age:.1f} s, longer than "
            f"train.step_timeout_s={self.timeout_s:g}; aborting this rank (exit {exit_codes.STALLED}); "
            f"stacks follow\n"
        )
        sys.stderr.flush()
        try:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        except Exception:  # stderr without a file descriptor: the line above is what matters
            pass
        sys.stderr.flush()
        os._exit(exit_codes.STALLED)

    def close(self) -> None:
        self._done.set()
        self._step = None
