"""Reading device values on the host: the one function the training step does it through.

    values = to_host(t, "step.tokens")     # list of Python numbers, one transfer

A read waits for the device (on CUDA: a synchronisation), so a step makes at most two, each of the
scalars it needs gathered into one tensor and reduced by one collective first: the global token
count (with the batch check and the stop-signal flag) before the backward, and the gradient norm
(with the loss and its finiteness) before the update. Everything else stays on the device.

A rehearsal (`megacrystal rehearse`) substitutes the values here (`set_stand_in`): meta tensors have
none. That substitution is the only one in the step's arithmetic, and it counts the reads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_stand_in: Callable[[str, torch.Tensor], list] | None = None


def set_stand_in(fn: Callable[[str, torch.Tensor], list] | None):
    """Install `fn(what, tensor) -> values` in place of reading (None: read); returns the previous one."""
    global _stand_in
    old, _stand_in = _stand_in, fn
    return old


def to_host(t: torch.Tensor, what: str) -> list:
    """The values of `t` (flattened) as Python numbers. `what` names the read (docs, rehearsal)."""
    if _stand_in is not None:
        return list(_stand_in(what, t))
    return t.detach().reshape(-1).tolist()
