"""Build the CUDA kernels (kernels/cuda/) with CMake and nvcc: `python -m megacrystal.compiled.build`.

    python -m megacrystal.compiled.build [--archs "80;90;100"] [--out build/cuda]

Needs nvcc (CUDA 12.8+ for sm_100) and CMake >= 3.18; no CUDA build of torch and no GPU. The library
lands where `megacrystal.compiled.cuda_kernels` looks for it. `pip install` builds it only when asked
(MEGACRYSTAL_CUDA=1), so the CPU install stays as fast as before.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "kernels" / "cuda"
DEFAULT_ARCHS = "80;90;100"


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME or /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").exists():
            return str(Path(root) / "bin" / "nvcc")
    return None


def find_cmake() -> str | None:
    found = shutil.which("cmake")
    if found:
        return found
    try:
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        return None


def nvcc_version(nvcc: str) -> tuple[int, int]:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def supported_archs(archs: str, version: tuple[int, int]) -> str:
    """`archs` without the ones this nvcc cannot target (sm_100 needs CUDA 12.8)."""
    keep = [a for a in archs.split(";") if a and not (int(a.rstrip("af")) >= 100 and version < (12, 8))]
    return ";".join(keep)


def build(out: Path, archs: str = DEFAULT_ARCHS, quiet: bool = False, extra: list[str] | None = None) -> Path:
    """Configure and build into `out`; returns the library's path. Raises RuntimeError naming what is missing."""
    nvcc, cmake = find_nvcc(), find_cmake()
    if nvcc is None:
        raise RuntimeError("no nvcc (CUDA toolkit) found on PATH, $CUDA_HOME or /usr/local/cuda")
    if cmake is None:
        raise RuntimeError("no cmake found (pip install cmake)")
    version = nvcc_version(nvcc)
    usable = supported_archs(archs, version)
    if usable != archs:
        print(
            f"megacrystal compiled.build: nvcc {version[0]}.{version[1]} cannot build sm {archs}; building sm {usable}"
        )
    if not usable:
        raise RuntimeError(f"nvcc {version[0]}.{version[1]} supports none of the asked architectures {archs}")
    archs = usable
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = [
        cmake,
        "-S",
        str(SOURCES),
        "-B",
        str(out),
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        f"-DMEGACRYSTAL_CUDA_ARCHS={archs}",
    ]
    kw = dict(check=True, capture_output=quiet, text=True)
    try:
        subprocess.run(cfg + list(extra or []), **kw)
        subprocess.run([cmake, "--build", str(out), "--parallel", str(min(4, os.cpu_count() or 2))], **kw)
    except subprocess.CalledProcessError as e:
        tail = ((e.stdout or "") + (e.stderr or ""))[-2000:]
        raise RuntimeError(f"CUDA kernel build failed ({' '.join(map(str, e.cmd[:3]))} ...):\n{tail}") from None
    return out / "libmegacrystal_cuda.so"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m megacrystal.compiled.build", description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default=DEFAULT_ARCHS, help="compute capabilities, ';'-separated (default 80;90;100)")
    ap.add_argument("--out", default=str(ROOT / "build" / "cuda"), help="build directory (default build/cuda)")
    a = ap.parse_args(argv)
    try:
        lib = build(Path(a.out), a.archs)
    except RuntimeError as e:
        print(f"megacrystal compiled.build: {e}", file=sys.stderr)
        return 1
    print(f"built {lib}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
