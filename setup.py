"""Build: the package, plus the C++ helpers (`megacrystal.compiled._native`) through CMake.

The native build is optional at install time: with no compiler or CMake the package still
installs and the data layer uses its numpy fallback (it says so once in the log).
The CUDA kernels (kernels/cuda/) are built by the same CMake project only when asked:
MEGACRYSTAL_CUDA=1 pip install -e . (or afterwards: python -m megacrystal.compiled.build).
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        try:
            import pybind11

            cmake = os.environ.get("CMAKE", "cmake")
            try:
                import cmake as cmake_pkg  # the pip wheel, when the build env has it

                cmake = str(Path(cmake_pkg.CMAKE_BIN_DIR) / "cmake")
            except ImportError:
                pass
            args = [
                cmake,
                str(ROOT),
                f"-DPython_EXECUTABLE={sys.executable}",
                f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                f"-DMEGACRYSTAL_NATIVE_OUTPUT_DIR={out.parent}",
                f"-DMEGACRYSTAL_NATIVE_OUTPUT_NAME={out.name}",
                "-DCMAKE_BUILD_TYPE=Release",
                f"-DMEGACRYSTAL_CUDA={os.environ.get('MEGACRYSTAL_CUDA', '0')}",
            ]
            subprocess.run(args, cwd=build_dir, check=True)
            subprocess.run([cmake, "--build", ".", "--parallel", str(os.cpu_count() or 2)], cwd=build_dir, check=True)
        except Exception as e:  # no compiler / cmake: keep the pure-Python install working
            print(f"megacrystal: native helpers not built ({e}); the numpy fallback will be used", file=sys.stderr)


setup(
    name="megacrystal",
    version="0.1.0",
    description="Megatron-style 3D-parallel pretraining of code+language LLMs with the Crystal recipe",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megacrystal", "megacrystal.*", "data_tools", "data_tools.*"]),
    ext_modules=[CMakeExtension("megacrystal.compiled._native")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[
        "torch>=2.4",  # the README pins torch==2.13.0 (CPU wheel); GPU machines bring their own
        "numpy>=1.24",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tokenizers>=0.15",
        "sentencepiece>=0.2",
        "zstandard>=0.21",
        "pyarrow>=14",
        "safetensors>=0.4",
        "tensorboard>=2.14",
        "psutil>=5.9",
        "matplotlib>=3.7",  # the figures of plot / compare / study (megacrystal/plotting.py)
    ],
    # Each extra installs the package it names and only that (the table in docs/kernels.md, checked by
    # tests/test_extras.py). NVIDIA apex is not on PyPI (the registry's `apex` is an unrelated web toolkit)
    # and flash-attn 2 is a source build against the local CUDA torch: both are recipes, not extras.
    extras_require={
        "triton": ["triton>=3.2"],
        "fa4": ["flash-attn-4>=4.0.0b36"],
        "dali": ["nvidia-dali-cuda130"],
        "gpu": ["triton>=3.2", "flash-attn-4>=4.0.0b36"],
        "eval": ["lm-eval[hf]>=0.4.5", "transformers>=4.45", "protobuf"],  # protobuf: SentencePiece -> fast tokenizer
        "plot": [],  # matplotlib is a dependency now; kept so `pip install 'megacrystal[plot]'` still works
        "dev": [
            "pytest>=7",
            "pytest-timeout",
            "hypothesis>=6",
            "triton==3.6.0",
            "megatron-core==0.16.1",
            "transformers>=4.45",
            "ruff==0.17.6",
            "pybind11>=2.12",  # tests/test_cmake_configure.py: a bare `cmake` at the root asks Python for it
        ],
    },
    entry_points={"console_scripts": ["megacrystal=megacrystal.cli:main"]},
)
