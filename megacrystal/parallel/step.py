"""One optimizer step's (or one evaluation's) compute, as an object the pipeline schedule is handed.

`StepCompute` holds what belongs to this step only: the micro-batches on the device, the loss scale
(1 / global loss-token count for training, 1 for evaluation) and the running sum of the masked
per-token losses. A schedule only decides the order; it calls `forward(chunk, mb, x)` and
`backward(chunk, mb, x, y, gy)`. Timed when `trace` is a list: (kind, chunk, mb, t0, t1).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.autograd import Variable


class StepCompute:
    def __init__(
        self,
        chunks: list,
        batches: list[dict],
        scale: float,
        trace: list | None = None,
        sync: Callable | None = None,
    ):
        self.chunks, self.batches, self.scale = chunks, batches, scale
        self.trace = trace
        self.sync = sync or (lambda: None)
        device = batches[0]["tokens"].device
        self.loss_sum = torch.zeros(1, dtype=torch.float64, device=device)  # masked per-token losses, this rank

    @property
    def num_microbatches(self) -> int:
        return len(self.batches)

    def forward(self, chunk: int, mb: int, x: torch.Tensor | None) -> torch.Tensor:
        """Chunk `chunk` on micro-batch `mb`: the output activation, or on the last virtual stage the
        scaled loss (whose backward is the gradient of the global mean loss)."""
        t0 = time.perf_counter() if self.trace is not None else 0.0
        m, b = self.chunks[chunk], self.batches[mb]
        kw = dict(position_ids=b.get("position_ids"), segment_ids=b.get("segment_ids"), labels=b["labels"])
        if b.get("cp_context") is not None:  # context parallel: ring attention (parallel/ring_attention.py)
            kw["cp"] = b["cp_context"]
        if b.get("cu_seqlens") is not None:  # document boundaries, computed by the loader on the host
            kw.update(cu_seqlens=b["cu_seqlens"], max_seqlen=b["max_seqlen"])
        out = m(tokens=b["tokens"], **kw) if m.pre_process else m(hidden=x, **kw)
        if m.post_process:
            s = (out * b["loss_mask"]).sum()
            self.loss_sum += s.detach().double()
            out = s * self.scale
        if self.trace is not None:
            self.sync()
            self.trace.append(("F", chunk, mb, t0, time.perf_counter()))
        return out

    def backward(
        self, chunk: int, mb: int, x: torch.Tensor | None, y: torch.Tensor, gy: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Backward of one forward: from the scalar loss (gy None) or from the output gradient `gy`;
        returns the input gradient (None on the first virtual stage)."""
        t0 = time.perf_counter() if self.trace is not None else 0.0
        if gy is None:
            torch.autograd.backward(y)  # the scalar loss of the last stage
        else:  # y's storage was released after it was sent: run the graph with the gradient given
            Variable._execution_engine.run_backward(
                tensors=(y,),
                grad_tensors=(gy,),
                keep_graph=False,
                create_graph=False,
                inputs=(),
                allow_unreachable=True,
                accumulate_grad=True,
            )
        gx = x.grad if x is not None else None
        if self.trace is not None:
            self.sync()
            self.trace.append(("B", chunk, mb, t0, time.perf_counter()))
        return gx
