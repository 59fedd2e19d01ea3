"""Worker processes tied to the parent's life, and a parent that cleans up when it is signalled.

    with on_signals(callback):          # SIGTERM/SIGHUP/SIGINT -> callback(signum) in the main thread
        pool = ...(initializer=...)     # each worker: die_with_parent(), worker_signals()
        stop_pool(pool)                 # cancel queued tasks, let the running ones return, reap

The callback must not raise while a ProcessPoolExecutor is in use (an exception inside submit() or
result() can leave its locks held), and workers must not be killed while the pool runs (a worker
killed while sending a result leaves the pool's reader thread blocked on a half message forever):
preprocess.py records the signal and raises `Terminated` when the task in hand returns; only a
second signal kills the workers and exits at once.

A worker asks the kernel to SIGKILL it when the parent dies (Linux prctl(PR_SET_PDEATHSIG)), so a
SIGKILLed parent leaves no orphan; where that is not available a watchdog thread polls the parent
pid once a second. Workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process group; the
parent handles it) and take SIGTERM's default action.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


class Terminated(SystemExit):
    """The run got SIGTERM/SIGHUP; `code` is 128 + the signal number, as a shell reports it."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def die_with_parent(parent_pid: int) -> None:
    """Called first in every worker: end this process as soon as `parent_pid` is gone."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
    if not armed:

        def watch():
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def worker_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def on_signals(callback, signals=(signal.SIGTERM, signal.SIGHUP, signal.SIGINT)):
    """Call `callback(signum)` on the signals, in the main thread, for the duration (no-op in other threads)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        callback(signum)

    saved = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def kill_workers(pool) -> list:
    """SIGKILL every worker of a ProcessPoolExecutor (their work is discarded); returns the processes."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()
    return procs


def stop_pool(pool, timeout: float = 60.0) -> None:
    """Shut a ProcessPoolExecutor down: queued tasks are cancelled, running ones finish, workers are reaped."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=True, cancel_futures=True)
    for p in procs:
        p.join(timeout)
