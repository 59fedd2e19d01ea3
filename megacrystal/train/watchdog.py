"""The step watchdog: a step that takes longer than `train.step_timeout_s` ends the process.

    dog = StepWatchdog(step_timeout(cfg, world_size), rank)   # 0: off (no thread); rank may be set later
    dog.start(step); ...the step...; dog.stop()
    dog.close()

On by default where a stall costs most: a multi-rank run gets 600 s (or half of `parallel.timeout_s` when
that is shorter, so the watchdog names the stalled rank before a collective times out); one rank gets none
(0) unless asked. The first step a process runs (compilation, autotuning, first-use kernels, a resume's
warm-up) may take FIRST_STEP_FACTOR times the limit.

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

DEFAULT_MULTI_RANK_S = 600.0
FIRST_STEP_FACTOR = 3.0


def step_timeout(cfg, world_size: int) -> float:
    """`train.step_timeout_s` as it applies to a run of `world_size` ranks (0: no watchdog)."""
    if cfg.train.step_timeout_s is not None:
        return float(cfg.train.step_timeout_s)
    if world_size <= 1:
        return 0.0
    return min(DEFAULT_MULTI_RANK_S, float(cfg.parallel.timeout_s) / 2)


class StepWatchdog:
    def __init__(self, timeout_s: float, rank: int = 0):
        self.timeout_s = float(timeout_s)
        self.rank = rank
        self._step: int | None = None
        self._since = 0.0
        self._limit = self.timeout_s * FIRST_STEP_FACTOR  # the first step; then timeout_s
        self._done = threading.Event()
        self._thread = None
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="megacrystal-watchdog", daemon=True)
            self._thread.start()

    def start(self, step: int) -> None:
        self._since = time.monotonic()
        self._step = step

    def stop(self) -> None:
        if self._step is not None:
            self._limit = self.timeout_s
        self._step = None

    def _watch(self) -> None:
        period = min(1.0, max(self.timeout_s / 4, 0.001))
        while not self._done.wait(period):
            step, since, limit = self._step, self._since, self._limit
            if step is None:
                continue
            age = time.monotonic() - since
            if age > limit:
                self._fire(step, age, limit)

    def _fire(self, step: int, age: float, limit: float) -> None:
        first = f" (x{FIRST_STEP_FACTOR:g} for this process's first step)" if limit > self.timeout_s else ""
        sys.stderr.write(
            f"megacrystal: watchdog: step {step} on rank {self.rank} has run {age:.1f} s, longer than "
            f"train.step_timeout_s={self.timeout_s:g}{first}; aborting this rank (exit {exit_codes.STALLED}); "
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
