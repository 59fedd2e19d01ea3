"""The C allocator's handling of large host blocks, for a process that computes on the CPU.

    keep_freed_memory()      # glibc: large freed blocks stay in the process for the next forward

A CPU forward allocates and frees the same large tensors on every call (one micro-batch's logits and
log-softmax: 8 x 128 x 4096 fp32 = 16 MiB each in the demo). glibc's malloc serves a block that large
with mmap, or from the heap whose free top it hands back to the kernel past its trim threshold, so each
forward page-faults fresh zeroed pages in again: in the demo evaluation that was 1.4 s of kernel time
beside 2.2 s of the loss compute. Raising the mmap and trim thresholds keeps freed blocks for reuse;
the process's resident size then stays near its peak until it exits (at most `trim` bytes more than it
holds). It changes no result. Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc malloc.h)
M_MMAP_THRESHOLD = -3
GLIBC_MMAP_MAX = 32 << 20  # the largest mmap threshold every glibc accepts (64-bit DEFAULT_MMAP_THRESHOLD_MAX)

_done: tuple[int, int] | None = None


def keep_freed_memory(mmap: int = 256 << 20, trim: int = 1 << 30) -> tuple[int, int] | None:
    """Blocks below `mmap` bytes come from the heap and up to `trim` free bytes stay in it (glibc only;
    an older glibc caps the mmap threshold at 32 MiB). Returns the (mmap, trim) thresholds set, or None
    where the C library is not glibc. Idempotent."""
    global _done
    if _done is not None:
        return _done
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: their mallopt means something else
            return None
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not mallopt(M_MMAP_THRESHOLD, mmap):
        mmap = GLIBC_MMAP_MAX
        if not mallopt(M_MMAP_THRESHOLD, mmap):
            return None
    if not mallopt(M_TRIM_THRESHOLD, trim):
        return None
    _done = (mmap, trim)
    return _done
