"""Cross-entropy over the vocabulary in Triton: chunked, fp32 math, online logsumexp; the full
[tokens, vocab] logits are never copied to fp32.

Built from two kernels over a [rows, V_local] block of logits whose columns are the global vocabulary
ids [vocab_start, vocab_start + V_local):

    ce_stats(logits, labels, vocab_start)   -> (row max m, Σ exp(x − m), target logit or 0 if not local)
    ce_grad(logits, labels, lse, dloss, vocab_start) -> dlogits = (softmax − onehot) · dloss (logits dtype)

Serial use (`cross_entropy_triton`): lse = m + log(s), loss = lse − target.

Vocab-parallel use (each tensor-parallel rank holds a vocabulary shard starting at `vocab_start`):

    m, s, t = ce_stats(local_logits, labels, vocab_start)
    M = all_reduce(m, MAX)
    S = all_reduce(s * exp(m − M), SUM)         # `cross_entropy.rescale_sumexp(m, s, M)`
    T = all_reduce(t, SUM)                      # exactly one rank holds each target
    lse = M + log(S);  loss = lse − T  (0 where label == ignore_index)
    backward: ce_grad(local_logits, labels, lse, dloss, vocab_start)   # no communication

`cross_entropy.ce_stats_reference` / `ce_grad_reference` are the plain-torch twins of the two pieces
with the same signatures (for CPU runs without the interpreter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .cross_entropy import rescale_sumexp  # noqa: F401  (re-exported for the vocab-parallel recipe)
from .triton_util import check_device, on_meta, rows2d


@triton.jit
def _ce_stats(
    L,
    LABELS,
    MAX,
    SUMEXP,
    TGT,
    stride_l,
    V,
    vocab_start,
    ignore_index,
    N_CHUNKS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    STAGES: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = L + row * stride_l
    cols = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)  # per-lane running max and sum (one reduce at the end)
    s = tl.zeros([BLOCK_V], dtype=tl.float32)
    for c in tl.range(0, N_CHUNKS, num_stages=STAGES):
        idx = c * BLOCK_V + cols
        x = tl.load(base + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
        # one exp per element: exp(min - max) rescales s when x is the new max, else is x's own term
        m_new = tl.maximum(m, x)
        e = tl.exp(tl.minimum(m, x) - tl.where(m_new == float("-inf"), 0.0, m_new))
        s = tl.where(x > m, s * e + 1.0, s + e)
        m = m_new
    mx = tl.max(m, axis=0)
    shift = tl.where(mx == float("-inf"), 0.0, mx)
    total = tl.sum(s * tl.exp(m - shift), axis=0)
    label = tl.load(LABELS + row)
    local = label - vocab_start
    here = (label != ignore_index) & (local >= 0) & (local < V)
    t = tl.load(base + tl.where(here, local, 0), mask=here, other=0.0).to(tl.float32)
    tl.store(MAX + row, mx)
    tl.store(SUMEXP + row, total)
    tl.store(TGT + row, tl.where(here, t, 0.0))


@triton.jit
def _ce_grad(
    L,
    LABELS,
    LSE,
    DLOSS,
    DL,
    stride_l,
    stride_dl,
    V,
    vocab_start,
    ignore_index,
    N_CHUNKS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    STAGES: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(LABELS + row)
    lse = tl.load(LSE + row)
    g = tl.load(DLOSS + row)
    g = tl.where(label == ignore_index, 0.0, g)
    local = label - vocab_start
    cols = tl.arange(0, BLOCK_V)
    for c in tl.range(0, N_CHUNKS, num_stages=STAGES):
        idx = c * BLOCK_V + cols
        mask = idx < V
        x = tl.load(L + row * stride_l + idx, mask=mask, other=float("-inf")).to(tl.float32)
        p = tl.exp(x - lse)
        p = tl.where(idx == local, p - 1.0, p)
        tl.store(DL + row * stride_dl + idx, (p * g).to(DL.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class CEConfig:
    block_v: int = 4096  # vocabulary columns per step
    warps: int = 8
    stages: int = 1  # software-pipelining depth of the chunk loop (1 = none)


# measured on an H200 (8192 x 32032 bf16, kernels/bench/NOTES.md): stats 62% of copy bandwidth with 8 warps
# (16: 56%); grad 94% with 16 warps (8: 92%); pipelining the chunk loop did not help either
STATS_CONFIG = CEConfig(4096, 8, 1)
GRAD_CONFIG = CEConfig(4096, 16, 1)


def _chunks(v: int, cfg: CEConfig) -> tuple[int, int, int]:
    bv = min(cfg.block_v, triton.next_power_of_2(max(v, 1)))
    return bv, triton.cdiv(v, bv), max(1, min(cfg.warps, bv // 256))


def ce_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_start: int = 0,
    ignore_index: int = -100,
    cfg: CEConfig | None = None,
):
    """logits [rows, V_local] (unit last stride), labels [rows] global ids -> fp32 (max, sumexp, target)."""
    check_device(logits)
    rows, v = logits.shape
    dev = logits.device
    mx = torch.empty(rows, dtype=torch.float32, device=dev)
    se = torch.empty(rows, dtype=torch.float32, device=dev)
    tg = torch.empty(rows, dtype=torch.float32, device=dev)
    if rows and not on_meta(logits):
        cfg = cfg or STATS_CONFIG
        bv, nc, w = _chunks(v, cfg)
        _ce_stats[(rows,)](
            logits,
            labels.contiguous(),
            mx,
            se,
            tg,
            logits.stride(0),
            v,
            vocab_start,
            ignore_index,
            N_CHUNKS=nc,
            BLOCK_V=bv,
            STAGES=cfg.stages,
            num_warps=w,
        )
    return mx, se, tg


def ce_grad(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    dloss: torch.Tensor,
    vocab_start: int = 0,
    ignore_index: int = -100,
    out: torch.Tensor | None = None,
    cfg: CEConfig | None = None,
) -> torch.Tensor:
    """d loss / d logits for a [rows, V_local] block, in the logits' dtype (`out` may be `logits` itself)."""
    check_device(logits)
    rows, v = logits.shape
    out = torch.empty_like(logits) if out is None else out
    if rows and not on_meta(logits):
        cfg = cfg or GRAD_CONFIG
        bv, nc, w = _chunks(v, cfg)
        _ce_grad[(rows,)](
            logits,
            labels.contiguous(),
            lse.contiguous(),
            dloss.float().contiguous(),
            out,
            logits.stride(0),
            out.stride(0),
            v,
            vocab_start,
            ignore_index,
            N_CHUNKS=nc,
            BLOCK_V=bv,
            STAGES=cfg.stages,
            num_warps=w,
        )
    return out


class CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, ignore_index):
        l2 = rows2d(logits)
        lab = labels.reshape(-1)
        if lab.numel() != l2.shape[0]:
            raise ValueError(f"cross_entropy: {lab.numel()} labels for {l2.shape[0]} rows of logits")
        m, s, t = ce_stats(l2, lab, 0, ignore_index)
        lse = m + torch.log(s)
        loss = torch.where(lab == ignore_index, torch.zeros_like(lse), lse - t)
        ctx.save_for_backward(l2, lab, lse)
        ctx.ignore_index = ignore_index
        ctx.shape = logits.shape
        return loss.view(labels.shape)

    @staticmethod
    def backward(ctx, dloss):
        l2, lab, lse = ctx.saved_tensors
        grad = ce_grad(l2, lab, lse, dloss.reshape(-1), 0, ctx.ignore_index)
        return grad.view(ctx.shape), None, None


def cross_entropy_triton(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Same contract as `cross_entropy.cross_entropy_reference`: per-token fp32 loss, 0 at ignore_index."""
    return CrossEntropyFunction.apply(logits, labels, ignore_index)
