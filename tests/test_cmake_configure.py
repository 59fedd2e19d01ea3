"""The C++ part configures from a bare `cmake -S . -B build` at the root, as a user types it in an activated
venv: CMake asks the Python it finds for pybind11's CMake dir (setup.py passes it explicitly). Real cmake
runs in tmp build dirs; skipped where cmake is missing."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="no cmake on this machine")


def _activated(prefix: str) -> dict:
    """The environment of a shell where the venv at `prefix` is activated."""
    env = {k: v for k, v in os.environ.items() if k not in ("pybind11_DIR", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = prefix
    env["PATH"] = f"{Path(prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _configure(build: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), *extra], env=env, capture_output=True, text=True, timeout=300
    )


def _cache(build: Path, key: str) -> str:
    for line in (build / "CMakeCache.txt").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return line.split("=", 1)[1]
    raise AssertionError(f"{key} not in {build}/CMakeCache.txt")


def _needs_pybind11():
    if importlib.util.find_spec("pybind11") is None:
        pytest.skip("pybind11 is not installed for this Python (the dev extra installs it)")


def test_bare_configure_asks_python_for_pybind11(tmp_path):
    _needs_pybind11()
    r = _configure(tmp_path / "build", _activated(sys.prefix))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    found = _cache(tmp_path / "build", "pybind11_DIR")
    asked = subprocess.run([sys.executable, "-m", "pybind11", "--cmakedir"], capture_output=True, text=True)
    assert Path(found) == Path(asked.stdout.strip()) and (Path(found) / "pybind11Config.cmake").is_file()
    assert "CUDA kernels not built" in r.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc: the CUDA configure needs it")
def test_bare_configure_with_cuda(tmp_path):
    _needs_pybind11()
    r = _configure(tmp_path / "build", _activated(sys.prefix), "-DMEGACRYSTAL_CUDA=1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "megacrystal: CUDA kernels for sm_80;90;100, build id" in r.stdout


def test_bare_configure_without_pybind11_says_how_to_fix(tmp_path):
    bare = tmp_path / "venv"  # a venv with nothing installed: no pybind11 for cmake to find
    venv.create(bare, with_pip=False)
    env = _activated(str(bare))
    env.pop("PYTHONPATH", None)
    r = _configure(tmp_path / "build", env)
    assert r.returncode != 0
    err = " ".join(r.stderr.split())
    assert f"pybind11 not found: {bare / 'bin'}" in err and "pip install pybind11" in err, err
