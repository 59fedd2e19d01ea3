"""The project's CUDA kernels (kernels/cuda/, a plain C ABI) loaded with ctypes.

    lib = cuda_kernels.library()     # None (and one log line saying why) when it is not built or unusable
    lib.adamw_flat(...)              # the fused AdamW step over one flat fp32 buffer
    lib.wgrad_accum(main_grad, dy, x)   # main_grad += dy^T x, bf16 inputs, fp32 accumulation (cuBLASLt)

The library is looked for at $MEGACRYSTAL_CUDA_LIB, next to this package (an install with
MEGACRYSTAL_CUDA=1) and in build/cuda/ of the source tree (`python -m megacrystal.compiled.build`). Loading
needs no GPU; calling the kernels needs CUDA tensors. No CUDA build of torch is needed to build it.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import math
import os
from pathlib import Path

from ..log import say_once

LIB_NAME = "libmegacrystal_cuda.so"
ABI_VERSION = 1
MAX_GROUPS = 16
COPY_NONE, COPY_BF16, COPY_FP32 = 0, 1, 2
BUILD_HINT = "python -m megacrystal.compiled.build (needs nvcc; see docs/kernels.md)"
_WORKSPACE_BYTES = 32 << 20


class _Group(ctypes.Structure):
    _fields_ = [
        ("decay", ctypes.c_float),
        ("step_size", ctypes.c_float),
        ("bc2_sqrt", ctypes.c_float),
        ("eps", ctypes.c_float),
    ]


class _AdamWArgs(ctypes.Structure):
    _fields_ = [
        ("one_minus_beta1", ctypes.c_float),
        ("beta2", ctypes.c_float),
        ("one_minus_beta2", ctypes.c_float),
        ("clip_coef", ctypes.c_float),
        ("n_groups", ctypes.c_int),
        ("groups", _Group * MAX_GROUPS),
    ]


def candidates() -> list[Path]:
    """Where the library is looked for, in order."""
    if os.environ.get("MEGACRYSTAL_CUDA_LIB"):  # exactly this one
        return [Path(os.environ["MEGACRYSTAL_CUDA_LIB"])]
    here = Path(__file__).resolve().parent
    return [here / LIB_NAME, here.parents[1] / "build" / "cuda" / LIB_NAME]


def adamw_scalars(lr: float, weight_decay: float, step: int, beta1: float, beta2: float, eps: float) -> tuple:
    """A group's (decay, step_size, bc2_sqrt, eps), computed in double as adamw_ does before rounding."""
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    return (1.0 - lr * weight_decay, -lr / bc1, math.sqrt(bc2), eps)


class CudaKernels:
    """The loaded library."""

    def __init__(self, path: Path):
        self.path = path
        self.lib = lib = ctypes.CDLL(str(path))
        lib.mc_abi_version.restype = ctypes.c_int
        lib.mc_build_id.restype = ctypes.c_char_p
        lib.mc_last_error.restype = ctypes.c_char_p
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.mc_adamw_flat.argtypes = [p, p, p, p, p, ctypes.c_int, p, ctypes.c_int, ctypes.POINTER(_AdamWArgs), p, p]
        lib.mc_adamw_flat.restype = ctypes.c_int
        lib.mc_wgrad_init.argtypes = [ctypes.c_char_p]
        lib.mc_wgrad_init.restype = ctypes.c_int
        lib.mc_wgrad_accum_bf16.argtypes = [p, p, p, i64, i64, i64, p, ctypes.c_uint64, p]
        lib.mc_wgrad_accum_bf16.restype = ctypes.c_int
        self.abi = int(lib.mc_abi_version())
        self.build_id = lib.mc_build_id().decode()
        self._workspace: dict = {}
        self._wgrad_ready = False

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{self.path.name} {what}: {self.lib.mc_last_error().decode()} (code {rc})")

    @staticmethod
    def _stream(t) -> ctypes.c_void_p:
        import torch

        return ctypes.c_void_p(torch.cuda.current_stream(t.device).cuda_stream)

    def adamw_flat(self, master, grad, exp_avg, exp_avg_sq, copy, chunks, groups, beta1, beta2, clip, nonfinite):
        """One step over a flat buffer. `groups`: [(decay, step_size, bc2_sqrt, eps)] per group index
        used in `chunks` (int64 [n, 3] on the device); `copy`: the bf16/fp32 model copy or None."""
        import torch

        if len(groups) > MAX_GROUPS:
            raise ValueError(f"fused AdamW: {len(groups)} optimizer groups, the kernel takes at most {MAX_GROUPS}")
        args = _AdamWArgs()
        args.one_minus_beta1, args.beta2, args.one_minus_beta2 = 1.0 - beta1, beta2, 1.0 - beta2
        args.clip_coef, args.n_groups = clip, len(groups)
        for k, g in enumerate(groups):
            args.groups[k] = _Group(*g)
        kind = COPY_NONE if copy is None else (COPY_BF16 if copy.dtype == torch.bfloat16 else COPY_FP32)
        rc = self.lib.mc_adamw_flat(
            master.data_ptr(),
            grad.data_ptr(),
            exp_avg.data_ptr(),
            exp_avg_sq.data_ptr(),
            None if copy is None else copy.data_ptr(),
            kind,
            chunks.data_ptr(),
            int(chunks.shape[0]),
            ctypes.byref(args),
            nonfinite.data_ptr(),
            self._stream(master),
        )
        self._check(rc, "mc_adamw_flat")

    def wgrad_accum(self, main_grad, dy, x) -> None:
        """main_grad[out, in] (fp32) += dy[T, out]^T @ x[T, in] (bf16, contiguous)."""
        import torch

        if not self._wgrad_ready:
            torch.cuda.current_blas_handle()  # makes torch load cuBLAS (and with it cuBLASLt)
            path = cublaslt_path()
            if path is None:
                raise RuntimeError("gradient-accumulation fusion: libcublasLt was not found in this process")
            self._check(self.lib.mc_wgrad_init(path.encode()), "mc_wgrad_init")
            self._wgrad_ready = True
        ws = self._workspace.get(main_grad.device)
        if ws is None:
            ws = self._workspace[main_grad.device] = torch.empty(
                _WORKSPACE_BYTES, dtype=torch.uint8, device=main_grad.device
            )
        t, out = dy.shape
        rc = self.lib.mc_wgrad_accum_bf16(
            main_grad.data_ptr(),
            dy.data_ptr(),
            x.data_ptr(),
            t,
            out,
            x.shape[1],
            ws.data_ptr(),
            _WORKSPACE_BYTES,
            self._stream(dy),
        )
        self._check(rc, "mc_wgrad_accum_bf16")


def cublaslt_path() -> str | None:
    """The libcublasLt this process already mapped (torch's), else one from the nvidia wheels or CUDA_HOME."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if "libcublasLt.so" in line:
                    return line.split()[-1]
    except OSError:
        pass
    roots = [os.environ.get("CUDA_HOME", "/usr/local/cuda") + "/lib64"]
    try:
        import nvidia

        roots += [f"{p}/*/lib" for p in nvidia.__path__]
    except ImportError:
        pass
    for r in roots:
        hits = sorted(glob.glob(f"{r}/libcublasLt.so*"))
        if hits:
            return hits[-1]
    return None


@functools.cache
def _load() -> tuple[CudaKernels | None, str]:
    tried = []
    for path in candidates():
        if not path.exists():
            tried.append(str(path))
            continue
        try:
            k = CudaKernels(path)
        except OSError as e:
            return None, f"{path} does not load ({e})"
        if k.abi != ABI_VERSION:
            return None, f"{path} has ABI {k.abi}, this code expects {ABI_VERSION}: rebuild with {BUILD_HINT}"
        return k, ""
    return None, f"not built (looked for {', '.join(tried)}); build with {BUILD_HINT}"


def library(quiet: bool = False) -> CudaKernels | None:
    """The loaded kernels, or None; the first miss is logged once."""
    k, why = _load()
    if k is None and not quiet:
        say_once("cuda-kernels-missing", f"CUDA kernels unavailable: {why}; torch paths run")
    return k


def why_missing() -> str:
    return _load()[1]


def reset() -> None:
    """Forget the loaded library (after MEGACRYSTAL_CUDA_LIB changed)."""
    _load.cache_clear()
