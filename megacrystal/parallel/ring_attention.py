"""Ring attention over the context-parallel group: each rank holds 2 of the sequence's 2·cp chunks
(data/context_parallel.py: rank r holds chunks r and 2·cp−1−r) and the keys/values of every rank
visit every other rank once.

Forward, step i = 0 .. cp−1: this rank holds the K/V of rank j = (r − i) mod cp. It posts the
transfer of that block to rank r+1 (and the receive of the next from rank r−1, non-blocking), computes
its queries against the block, merges the partial output by log-sum-exp, then waits for the transfer.
What a step computes follows from the chunk numbers alone (c = chunk length):
    i = 0 (j = r)  all queries, all keys, causal                       (the diagonal)
    j < r          all queries, the first c keys (chunk j), no mask    (chunk 2cp−1−j is in the future)
    j > r          the last c queries (chunk 2cp−1−r), all keys        (chunk r sees nothing of rank j)
so every step does the same work, 2c·c query-key pairs, and the fully masked quarter is skipped.
With document masks (`model.document_mask`) a query at global index i sees key j iff
doc_start(i) <= j <= i: the block mask is built from this rank's `cp_doc_start` (host data, moved
with the batch) and the key block's global indices (from its chunk numbers; no transfer needed).

Backward: the K/V blocks travel the same way again; each rank computes its block's dQ, dK, dV from the
final output and log-sum-exp (model/attention_lse.py) and adds dK/dV to an accumulator that travels
with the block (on a tag of its own) and arrives home after the cp-th step. Every transfer is a
`collectives.ring_shift` over the grid's cp group.
"""

from __future__ import annotations

import torch

from ..log import say_once
from ..model.attention_lse import block_backward, block_forward, pick_kernel
from . import collectives as C
from .state import Group

KV_TAG, DKV_TAG = 21, 22


class RingContext:
    """One micro-batch's context-parallel attention: the cp group, and (document masks) the global
    index of each local token's document start [b, s_local]. The model calls `attention`."""

    def __init__(self, group: Group, doc_start: torch.Tensor | None = None):
        self.group = group
        self.doc_start = doc_start

    def positions(self, rank: int, n: int, device) -> torch.Tensor:
        """Global indices of the n tokens cp rank `rank` holds (chunks rank and 2·cp−1−rank)."""
        c, last = n // 2, 2 * self.group.size - 1 - rank
        return torch.cat(
            [
                torch.arange(rank * c, (rank + 1) * c, device=device),
                torch.arange(last * c, (last + 1) * c, device=device),
            ]
        )

    def block(self, step: int, n: int, device) -> tuple[slice, slice, bool, torch.Tensor | None]:
        """(query rows, key columns, causal, allowed mask) of ring step `step` for n local tokens."""
        r, cp, c = self.group.rank, self.group.size, n // 2
        j = (r - step) % cp
        rows, keys = slice(0, n), slice(0, n)
        if step > 0 and j < r:
            keys = slice(0, c)
        elif step > 0:
            rows = slice(c, n)
        if self.doc_start is None:
            return rows, keys, step == 0, None
        gq = self.positions(r, n, device)[rows]
        gk = self.positions(j, n, device)[keys]
        ds = self.doc_start[:, rows]
        allowed = (gk[None, None, :] >= ds[:, :, None]) & (gk[None, None, :] <= gq[None, :, None])
        return rows, keys, False, allowed

    def attention(self, q, k, v, scale: float, backend: str = "auto") -> torch.Tensor:
        """q [b, s_local, hq, d], k/v [b, s_local, hk, d] -> [b, s_local, hq, d]: attention over the
        whole sequence (all cp ranks call it together)."""
        if q.shape[1] % 2:
            raise ValueError(f"ring attention: {q.shape[1]} local tokens, expected two equal chunks")
        kernel = pick_kernel(backend, q.device, q.dtype, masked=self.doc_start is not None)
        say_once(
            f"ring-{kernel}", f"ring attention over cp={self.group.size}: {kernel} block kernel on {q.device.type}"
        )
        return _RingAttention.apply(q, k, v, self, scale, kernel)


def _merge(out, lse, o, lo, rows) -> None:
    """Fold a block's (o, lo) into the running (out, lse) of `rows`, in place (log-sum-exp weights)."""
    a = lse[:, :, rows]
    new = torch.logaddexp(a, lo)
    wa = torch.exp(a - new).transpose(1, 2)[..., None]
    wb = torch.exp(lo - new).transpose(1, 2)[..., None]
    out[:, rows] = out[:, rows] * wa + o * wb
    lse[:, :, rows] = new


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rc: RingContext, scale: float, kernel: str):
        cp, n = rc.group.size, q.shape[1]
        k_cur, v_cur = k.contiguous(), v.contiguous()
        out = lse = None
        aux = []
        for i in range(cp):
            if i + 1 < cp:
                (k_next, v_next), work = C.ring_shift([k_cur, v_cur], rc.group, KV_TAG)
            rows, keys, causal, allowed = rc.block(i, n, q.device)
            o, lo, a = block_forward(kernel, q[:, rows], k_cur[:, keys], v_cur[:, keys], scale, causal, allowed)
            aux.append(a)
            if out is None:  # the diagonal covers every row
                out, lse = o, lo
            else:
                _merge(out, lse, o, lo, rows)
            if i + 1 < cp:
                work.wait()
                k_cur, v_cur = k_next, v_next
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.rc, ctx.scale, ctx.kernel, ctx.aux = rc, scale, kernel, aux
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        rc, cp, n = ctx.rc, ctx.rc.group.size, q.shape[1]
        wide = lse.dtype
        dq = torch.zeros(q.shape, dtype=wide, device=q.device)
        k_cur, v_cur = k.contiguous(), v.contiguous()
        acc, acc_work = None, None  # dK/dV of the block held now, in flight from the previous rank
        for i in range(cp):
            if i + 1 < cp:
                (k_next, v_next), work = C.ring_shift([k_cur, v_cur], rc.group, KV_TAG)
            rows, keys, causal, allowed = rc.block(i, n, q.device)
            gq, gk, gv = block_backward(
                ctx.kernel,
                dout[:, rows],
                q[:, rows],
                k_cur[:, keys],
                v_cur[:, keys],
                out[:, rows],
                lse[:, :, rows],
                ctx.aux[i],
                ctx.scale,
                causal,
                allowed,
            )
            dq[:, rows] += gq
            if acc is None:
                dk, dv = (
                    torch.zeros(k.shape, dtype=wide, device=k.device),
                    torch.zeros(v.shape, dtype=wide, device=v.device),
                )
            else:
                acc_work.wait()
                dk, dv = acc
            dk[:, keys] += gk
            dv[:, keys] += gv
            acc, acc_work = C.ring_shift([dk, dv], rc.group, DKV_TAG)  # on to the block's next visitor
            if i + 1 < cp:
                work.wait()
                k_cur, v_cur = k_next, v_next
        acc_work.wait()  # after cp steps the accumulator of this rank's own block is back
        dk, dv = acc
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None
