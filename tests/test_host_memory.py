"""eval's CPU allocator setting: large freed blocks stay in the process, so a forward's tensors reuse
the last one's pages instead of page-faulting fresh ones in (counted by the kernel, not timed).

The blocks are 48 MiB, above the largest mmap threshold glibc's own dynamic rule reaches (32 MiB), so
without the setting every cycle maps and faults fresh pages; with it, after a few warm-up cycles
(the heap settles), none."""

import subprocess
import sys

import pytest

CHILD = """
import resource, sys, torch
from megacrystal.host_memory import keep_freed_memory
set_ = keep_freed_memory() if sys.argv[1] == "keep" else None
assert sys.argv[1] != "keep" or keep_freed_memory() == set_  # idempotent
def cycle():  # three large tensors at once, as a loss forward's logits and log-softmax
    xs = [torch.empty(12 << 20).fill_(1.0) for _ in range(3)]
    del xs
for _ in range(8):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print(set_ is not None, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True).stdout
    setting, faults = out.split()
    return setting, int(faults)


def test_freed_blocks_are_reused_without_page_faults():
    setting, kept = _faults("keep")
    if setting != "True":
        pytest.skip("not glibc: the C library's allocator is left as it is")
    _, default = _faults("default")
    pages = 10 * 3 * (48 << 20) // 4096  # fresh pages for every tensor of every cycle
    assert default > pages // 2, (
        f"without the setting {default} faults (expected about {pages}): the case shows nothing"
    )
    assert kept < pages // 100, f"{kept} minor faults over 10 cycles with the setting (fresh pages would be {pages})"
