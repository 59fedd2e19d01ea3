"""Test-session setup. Triton kernels run compiled on a GPU; without one they run under Triton's
interpreter on CPU tensors, which must be switched on before anything imports triton.

Torch runs one intra-op thread in the test process and in every process it starts (unless
OMP_NUM_THREADS says otherwise): the tests use tiny models, whose many small ops gain nothing from a
second thread, and on a loaded machine (CI, a shared box) every parallel region would wait for both
threads to be scheduled: the demo test's 6 training steps took 274 s with two threads and 25 s with one
at a load of 11-15 on 2 cores.

The session's cache directory (XDG_CACHE_HOME: the planner's rehearsed layer shapes, compiled graphs,
kernel records) is a fresh one under pytest's temporary directory, for this process and every process
it starts: a test never reads what an earlier build left in the user's cache, and two suites at once
never share one."""

import os
import shutil

import pytest

if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"

import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def _own_cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
        yield


@pytest.fixture(scope="module")
def rehearsal_workdir(tmp_path_factory):
    """A rehearsal work directory shared by a module's tests, removed after them: its stand-in data runs
    to gigabytes at long sequence lengths."""
    path = tmp_path_factory.mktemp("rehearsal")
    yield path
    shutil.rmtree(path, ignore_errors=True)
