"""Stopping a run cleanly: SIGTERM (what Slurm and torchrun send) and Ctrl-C.

    stop = StopSignals()                 # installs the handlers (main thread)
    ...at each step, on every rank:
    out = engine.train_step(mbs, lr, stop=stop.signum is not None)
    if out["stopped"]: save(step); raise StopRequested(...)
    stop.uninstall()

SIGTERM, or a first SIGINT, only marks the process; the next step's batch check carries the flag
(the same all-reduce and host read as the global token count, engine/engine.py `_prepare`: a rank
that got the signal is enough), so every rank stops at the same step boundary before running it,
the checkpoint of the steps done is written and the run exits with `exit_codes.PREEMPTED` (75). Repeated
SIGTERMs change nothing (Slurm and torchrun may both send one). A second SIGINT exits at once
(`exit_codes.INTERRUPTED`, 130), without saving: it is noticed by a thread reading the signal
wakeup fd, so it works even while the main thread is blocked inside a collective.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from . import exit_codes


class StopRequested(Exception):
    """The run stopped on a signal after saving; the message is one line."""


class StopSignals:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._interrupts = 0
        self._old: dict = {}
        self._old_fd = -1
        self._installed = threading.current_thread() is threading.main_thread()
        if not self._installed:  # signal handlers can only be set from the main thread
            return
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(True)
        self._wsock.setblocking(False)
        for s in self.SIGNALS:
            self._old[s] = signal.signal(s, self._python_handler)
        self._old_fd = signal.set_wakeup_fd(self._wsock.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="megacrystal-signals", daemon=True).start()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal to another rank"

    def _python_handler(self, signum, frame) -> None:
        """The Python-level handler runs late (between bytecodes); the watcher thread does the work."""

    def _watch(self) -> None:
        while True:
            try:
                data = self._rsock.recv(16)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in self.SIGNALS:
                    self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self._interrupts >= 1:
            sys.stderr.write(
                f"megacrystal: second SIGINT: exiting now without saving (exit {exit_codes.INTERRUPTED})\n"
            )
            sys.stderr.flush()
            os._exit(exit_codes.INTERRUPTED)
        if signum == signal.SIGINT:
            self._interrupts += 1
        if self.signum is None:
            self.signum = signum
            rank = os.environ.get("RANK", "0")
            sys.stderr.write(
                f"megacrystal: {name} received (rank {rank}): finishing the current step, saving a checkpoint, "
                f"then exit {exit_codes.PREEMPTED}; a second SIGINT exits at once\n"
            )
            sys.stderr.flush()

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        signal.set_wakeup_fd(self._old_fd)
        for s, h in self._old.items():
            signal.signal(s, h)
        self._wsock.close()  # the watcher's recv returns b"": it ends
        self._rsock.close()
