"""Host-side process groups: the only groups that carry host (CPU) tensors.

Every group of the grid (tp, pp, dp, mp, embedding, world) is a device group: on CUDA it is NCCL,
whose collectives take device tensors only (a host tensor raises "No backend type associated with
device type cpu"). What has to move host values between ranks at set-up and around checkpoints goes
over one gloo group over all ranks instead:

- the data set-up handshake (data/index_cache.py: rank 0 builds the index arrays, the others wait
  for its verdict);
- checkpoint traffic (checkpoint/writer.py and load.py: DCP's plans and metadata, the commit
  agreement; files.py: resume-point verification; train/init_from.py).

Nothing in a training step uses it. `HOST_BACKEND` is the one place its backend is named (a
rehearsal replaces gloo with a fake host backend).
"""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

HOST_BACKEND = "gloo"


def host_group(timeout_s: float = 1800.0):
    """A new gloo group over every rank (collective: every rank calls it, in the same order); None
    in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist.new_group(backend=HOST_BACKEND, timeout=timedelta(seconds=timeout_s))


def carries_host_tensors(group=None) -> bool:
    """Can `group` (None: the default group) take CPU tensors? gloo, or a backend map with a cpu entry."""
    backend = str(dist.get_backend(group))
    if ":" in backend:
        return any(part.split(":")[0] == "cpu" for part in backend.split(","))
    return backend in ("gloo", "mpi", "fake")
