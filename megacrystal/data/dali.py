"""Optional NVIDIA DALI backend (`data.backend: dali`, extra `dali`, package nvidia-dali-cuda130).

The samples are the ones `PhasedDataset` computes (the same pure function of the global sample
id), fed to a DALI pipeline through `external_source` in batch mode; DALI does the prefetching
(its queue) and, on a GPU, the host-to-device copy, so the batches are identical to the torch
backend's. `device_id=None` runs the pipeline on the CPU (how it is tested here). DALI is imported
only when this backend is chosen; without it the error says how to install it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .batch import SAMPLE_KEYS, finish_batch

OUTPUTS = SAMPLE_KEYS + ("source_id", "phase_id", "sample_id")


def require_dali():
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali.plugin import pytorch  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"data.backend: dali needs NVIDIA DALI (pip install 'megacrystal[dali]', package "
            f"nvidia-dali-cuda130), which is not importable here ({e}); use data.backend: torch"
        ) from None


def dali_micro_batches(
    dataset, batches, num_workers: int = 0, device_id: int | None = None, prefetch: int = 2
) -> Iterator[dict]:
    """Micro-batches (dicts of torch tensors, as `collate` makes them) for `batches`, a sequence of
    global-id lists (indexed by DALI's iteration number)."""
    require_dali()
    import torch
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    if device_id is None and torch.cuda.is_available():
        device_id = torch.cuda.current_device()
    if len(batches) == 0:
        return
    size = len(batches[0])

    def source(info):
        i = info.iteration
        if i >= len(batches):
            raise StopIteration
        samples = [dataset[g] for g in batches[i]]
        return tuple([np.atleast_1d(np.asarray(s[k])) for s in samples] for k in OUTPUTS)

    @pipeline_def(
        batch_size=size, num_threads=max(1, num_workers), device_id=device_id, prefetch_queue_depth=prefetch, seed=0
    )
    def pipe():
        outs = fn.external_source(source=source, num_outputs=len(OUTPUTS), batch=True, batch_info=True)
        return tuple(o.gpu() for o in outs) if device_id is not None else tuple(outs)

    p = pipe()
    p.build()
    for out in DALIGenericIterator([p], list(OUTPUTS)):
        t = out[0]
        mb = {k: t[k] for k in SAMPLE_KEYS}
        for k in ("source_id", "phase_id", "sample_id"):
            mb[k] = t[k].reshape(-1).to(torch.int64)
        yield finish_batch(mb)
