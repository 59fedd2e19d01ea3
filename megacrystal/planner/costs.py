"""The cost record of one distinct layer shape, and where it comes from.

A `LayerCost` holds what one transformer layer (or the embedding, or the head with its loss) does
for one micro-batch on one rank: operations with their FLOPs and bytes by class (gemm, attention,
memory-bound), the collectives it makes (kind, group, bytes, phase, whether anything can hide
them), its parameters on this rank, and the memory it holds (activations kept for the backward,
temporaries). A `CostSource` produces records; the simulator (`compose.py`) only reads them.

`FormulaCosts` is today's source: FLOPs from the model's shapes (their sum is the model's own
accounting, `train.metrics.flops_per_token`, checked by a test) and memory from a per-tensor count of
what autograd keeps, both marked as formula in the output. The rehearsal (`megacrystal rehearse`)
will be a second source returning the same records measured on `meta`; nothing else changes.
Records are cached per `LayerShape` (tp, sp, recompute, micro-batch size, sequence length, features)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Protocol

from .shapes import LayerShape

PHASES = ("fwd", "recompute", "bwd")


@dataclass(frozen=True)
class Op:
    name: str
    cls: str  # gemm | attention | memory
    phase: str  # fwd | recompute | bwd
    flops: float = 0.0
    nbytes: float = 0.0
    gemm: tuple | None = None  # (m, n, k, batch)
    special: float = 0.0  # transcendental evaluations (exp, log, tanh): a CPU's ceiling, not a GPU's


@dataclass(frozen=True)
class Coll:
    name: str
    kind: str  # all_reduce | all_gather | reduce_scatter | p2p (the cp ring's batched isend/irecv)
    group: str  # tp, or cp for the ring
    nbytes: float  # one call's payload (p2p: what a rank sends per hop)
    phase: str
    hidden_by: str | None = None  # an op name of the same phase that runs concurrently (else synchronous)
    hide_frac: float = 1.0  # the share of that op's time that can hide it
    count: int = 1  # calls per layer and micro-batch


@dataclass
class LayerCost:
    ops: list = field(default_factory=list)
    colls: list = field(default_factory=list)
    params: float = 0.0  # on this rank
    activations: float = 0.0  # bytes kept from forward to backward, per micro-batch
    temporaries: float = 0.0  # peak transient bytes inside the layer
    host_ops: float = 0.0  # ops the host dispatches per micro-batch, as measured (0: one per record op)
    source: str = "formula"  # where the memory and the FLOP/byte totals came from
    measured: dict = field(default_factory=dict)  # a measured source's ratios to the formula, its seconds

    def flops(self, phase: str | None = None, cls: str | None = None) -> float:
        return sum(o.flops for o in self.ops if (phase is None or o.phase == phase) and (cls is None or o.cls == cls))


class CostSource(Protocol):
    flops_from: str
    memory_from: str

    def layer(self, s: LayerShape) -> LayerCost: ...
    def embedding(self, s: LayerShape) -> LayerCost: ...
    def head(self, s: LayerShape) -> LayerCost: ...


def ring_colls(tokens: float, kv_width: float, e: int, cp: int, fused: bool = True) -> list[Coll]:
    """The cp ring of one layer and micro-batch, as parallel/ring_attention.py runs it. Forward: cp-1
    hops of this rank's K and V (2·tokens·kv_width elements), each posted before a block's compute and
    waited after it, so a hop hides behind one block (the cp blocks do equal work: (cp-1)/cp of the
    attention). Backward: cp-1 hops of K/V together with the dK/dV accumulator of the block before
    (wide dtype: fp32, fp64 for fp64), each behind one block's backward, and the last dK/dV hop home
    after the last block, exposed."""
    kv = 2.0 * tokens * kv_width * e
    dkv = 2.0 * tokens * kv_width * (8 if e == 8 else 4)
    share = (cp - 1) / cp
    fwd, bwd = ("attn", "attn.bwd") if fused else (None, None)
    return [
        Coll("ring.kv", "p2p", "cp", kv, "fwd", hidden_by=fwd, hide_frac=share, count=cp - 1),
        Coll("ring.kv+dkv", "p2p", "cp", kv + dkv, "bwd", hidden_by=bwd, hide_frac=share, count=cp - 1),
        Coll("ring.dkv.last", "p2p", "cp", dkv, "bwd"),
    ]


def _gemm_ops(name, m, n, k, e, phase_f, fused_accum, batch=1, weight=True):
    """Forward GEMM y[m,n] = x[m,k] w[k,n] and its two backward GEMMs; weight=False for activation x
    activation products (attention without a fused kernel). The weight-gradient GEMM of a bf16 weight
    either accumulates into the fp32 main grad (fused) or writes a bf16 grad that a memory-bound add
    folds into it (10 B per element: read 2 + 4, write 4)."""
    f = 2.0 * m * n * k * batch
    io = (m * k + k * n + m * n) * e * batch
    ops = [Op(name, "gemm", phase_f, f, io, (m, n, k, batch))]
    if phase_f != "fwd":
        return ops
    ops.append(Op(name + ".dgrad", "gemm", "bwd", f, io, (m, k, n, batch)))
    wio = io + (8 * k * n if (weight and fused_accum) else 0)
    ops.append(Op(name + ".wgrad", "gemm", "bwd", f, wio, (k, n, m, batch) if weight else (m, k, n, batch)))
    if weight and not fused_accum:
        ops.append(Op(name + ".accum", "memory", "bwd", 0.0, 12.0 * k * n))
    return ops


class FormulaCosts:
    flops_from = "model accounting (train/metrics.py shapes)"
    memory_from = "formula (tensors autograd keeps; the fallback, --cost-source formula)"

    @lru_cache(maxsize=4096)  # noqa: B019 - one source per process; the cache is the point
    def layer(self, s: LayerShape) -> LayerCost:
        M, F = s.model, s.features
        t, e, T, b, sq = s.tp, F.param_bytes, s.tokens, s.mbs, s.seq
        h, d = M.hidden, M.head_dim
        a, kv = M.heads // t, M.kv_heads // t
        qkv_n, f = (a + 2 * kv) * d, M.ffn_padded(t) // t
        Tsp = T // t if s.sp else T
        swiglu = M.mlp == "swiglu"
        col_in = 3 if swiglu else 2  # column-parallel linears: qkv, up, (gate)
        drop = M.dropout > 0
        unfused = F.attention == "unfused"
        ops: list[Op] = []
        colls: list[Coll] = []
        acc = F.grad_accum_fused

        def mem(name, nbytes, phase="fwd", special=0.0):
            ops.append(Op(name, "memory", phase, 0.0, nbytes, special=special))

        def tp_in(name):  # input of a column-parallel linear
            if s.sp and t > 1:
                colls.append(Coll(name + ".all_gather", "all_gather", "tp", T * h * e, "fwd"))
                colls.append(Coll(name + ".reduce_scatter", "reduce_scatter", "tp", T * h * e, "bwd"))
            elif t > 1:
                colls.append(
                    Coll(
                        name + ".all_reduce",
                        "all_reduce",
                        "tp",
                        T * h * e,
                        "bwd",
                        hidden_by=name + ".wgrad" if F.tp_overlap_wgrad else None,
                    )
                )

        def tp_out(name):  # output of a row-parallel linear
            if t > 1:
                kind = "reduce_scatter" if s.sp else "all_reduce"
                colls.append(Coll(name + "." + kind, kind, "tp", T * h * e, "fwd"))
                if s.sp:
                    colls.append(Coll(name + ".all_gather", "all_gather", "tp", T * h * e, "bwd"))

        def residual(name):
            nb = 3 * Tsp * h * e + (2 * Tsp * h * e if M.bias and not drop else 0) + (Tsp * h if drop else 0)
            mem(name, nb)
            mem(name + ".bwd", nb, "bwd")

        # attention block
        mem("norm1", 2 * Tsp * h * e)
        mem("norm1.bwd", 4 * Tsp * h * e, "bwd")
        tp_in("qkv")
        ops += _gemm_ops("qkv", T, qkv_n, h, e, "fwd", acc)
        if M.rotary:
            mem("rotary", 2 * T * qkv_n * e)
            mem("rotary.bwd", 2 * T * qkv_n * e, "bwd")
        core = []
        cp, ql = s.cp, sq // s.cp  # context parallel: this rank's queries see every key over the ring
        if unfused:
            core += _gemm_ops("attn.qk", ql, sq, d, e, "fwd", acc, batch=b * a, weight=False)
            core.append(Op("attn.softmax", "memory", "fwd", 0.0, 2 * b * a * ql * sq * e, special=b * a * ql * sq))
            core.append(Op("attn.softmax.bwd", "memory", "bwd", 0.0, 3 * b * a * ql * sq * e))
            if drop:
                core.append(Op("attn.dropout", "memory", "fwd", 0.0, b * a * ql * sq * (2 * e + 1)))
                core.append(Op("attn.dropout.bwd", "memory", "bwd", 0.0, b * a * ql * sq * (2 * e + 1)))
            core += _gemm_ops("attn.av", ql, d, sq, e, "fwd", acc, batch=b * a, weight=False)
        else:
            fl = 2.0 * b * a * sq * sq * d / cp  # causal: half of QK^T and AV; balanced chunks: 1/cp each
            core.append(Op("attn", "attention", "fwd", fl, 4 * T * a * d * e))
            core.append(Op("attn.bwd", "attention", "bwd", 2.5 * fl, 8 * T * a * d * e))
        ops += core
        if cp > 1:
            colls += ring_colls(T, kv * d, e, cp, fused=not unfused)
        ops += _gemm_ops("proj", T, h, a * d, e, "fwd", acc)
        tp_out("proj")
        residual("proj.residual")
        # MLP block
        mem("norm2", 2 * Tsp * h * e)
        mem("norm2.bwd", 4 * Tsp * h * e, "bwd")
        tp_in("up")
        ops += _gemm_ops("up", T, f, h, e, "fwd", acc)
        if swiglu:
            tp_in("gate")
            ops += _gemm_ops("gate", T, f, h, e, "fwd", acc)
            mem("swiglu", 3 * T * f * e, special=T * f)
            mem("swiglu.bwd", 5 * T * f * e, "bwd", special=T * f)
            act_fwd = ops[-1]  # this engine's selective recompute reruns it too (model/recompute.py)
        else:
            mem("gelu", 2 * T * f * e, special=T * f)
            mem("gelu.bwd", 3 * T * f * e, "bwd", special=T * f)
        ops += _gemm_ops("down", T, h, f, e, "fwd", acc)
        tp_out("down")
        residual("down.residual")

        # recompute: the forward again, inside the backward
        if s.recompute == "full":
            ops += [Op(o.name, o.cls, "recompute", o.flops, o.nbytes, o.gemm) for o in ops if o.phase == "fwd"]
            colls += [replace(c, phase="recompute") for c in colls if c.phase == "fwd"]
        elif s.recompute == "selective":  # the attention core again (under cp its ring too); SwiGLU's activation
            again = [o for o in core if o.phase == "fwd"] + ([act_fwd] if swiglu else [])
            ops += [Op(o.name, o.cls, "recompute", o.flops, o.nbytes, o.gemm) for o in again]
            colls += [replace(c, phase="recompute") for c in colls if c.phase == "fwd" and c.group == "cp"]

        # parameters on this rank: sharded matrices and column biases, replicated norms and row biases
        mats = 3 if swiglu else 2
        sharded = h * qkv_n + a * d * h + mats * h * f + ((qkv_n + (mats - 1) * f) if M.bias else 0)
        params = sharded + 4 * h + (2 * h if M.bias else 0)

        # activations kept for the backward (per micro-batch)
        sq2 = b * a * ql * sq
        if unfused:  # softmax output, and with dropout its mask and result
            core_keep = e * sq2 + ((e + 1) * sq2 if drop else 0)
        else:  # the fused kernel's output and log-sum-exp
            core_keep = T * a * d * e + b * a * ql * 4
        gathered = T * h * e
        keep = {
            "norm1 in": Tsp * h * e,
            "qkv in": gathered if (s.sp and t > 1) else T * h * e,
            "q k v": T * qkv_n * e,
            "attention core": core_keep,
            "proj in": T * a * d * e if unfused else 0,
            "norm2 in": Tsp * h * e,
            "mlp in": (col_in - 1) * gathered if (s.sp and t > 1) else T * h * e,
            "mlp hidden": (3 if swiglu else 2) * T * f * e,
            "dropout masks": 2 * Tsp * h if drop else 0,
            "norm stats": 2 * Tsp * 8,
        }
        if s.recompute == "full":
            acts = Tsp * h * e
        elif s.recompute == "selective":  # Megatron's: the attention core; this engine also drops SwiGLU's output
            acts = sum(keep.values()) - keep["attention core"] - (T * f * e if swiglu else 0)
        else:
            acts = sum(keep.values())
        temps = max(3 * T * f * e, sq2 * 4 if unfused else 0) + (sum(keep.values()) if s.recompute == "full" else 0)
        return LayerCost(ops, colls, float(params), float(acts), float(temps))

    @lru_cache(maxsize=1024)  # noqa: B019
    def embedding(self, s: LayerShape) -> LayerCost:
        M, F = s.model, s.features
        t, e, T, h = s.tp, F.param_bytes, s.tokens, M.hidden
        Tsp = T // t if s.sp else T
        v = M.vocab_padded(t) // t
        ops = [
            Op("embedding", "memory", "fwd", 0.0, 3 * T * h * e),  # gather rows, muP scale
            Op("embedding.bwd", "memory", "bwd", 0.0, 3 * T * h * e + v * h * (e + 10)),  # dense grad + accumulate
        ]
        colls = []
        if t > 1:
            kind = "reduce_scatter" if s.sp else "all_reduce"
            colls.append(Coll("embedding." + kind, kind, "tp", T * h * e, "fwd"))
            if s.sp:
                colls.append(Coll("embedding.all_gather", "all_gather", "tp", T * h * e, "bwd"))
        params = v * h + (s.seq * h if M.learned_positions else 0)
        return LayerCost(ops, colls, float(params), float(Tsp * h * e), float(v * h * e))

    @lru_cache(maxsize=1024)  # noqa: B019
    def head(self, s: LayerShape) -> LayerCost:
        """Final norm, the output head and the vocab-parallel cross-entropy, for one micro-batch."""
        M, F = s.model, s.features
        t, e, T, h = s.tp, F.param_bytes, s.tokens, M.hidden
        Tsp = T // t if s.sp else T
        v = M.vocab_padded(t) // t
        ops = [
            Op("final_norm", "memory", "fwd", 0.0, 2 * Tsp * h * e),
            Op("final_norm.bwd", "memory", "bwd", 0.0, 4 * Tsp * h * e),
        ]
        colls = []
        if t > 1 and s.sp:
            colls.append(Coll("head.all_gather", "all_gather", "tp", T * h * e, "fwd"))
            colls.append(Coll("head.reduce_scatter", "reduce_scatter", "tp", T * h * e, "bwd"))
        elif t > 1:
            colls.append(Coll("head.all_reduce", "all_reduce", "tp", T * h * e, "bwd"))
        ops += _gemm_ops("head", T, v, h, e, "fwd", F.grad_accum_fused)
        ops.append(Op("cross_entropy", "memory", "fwd", 0.0, T * v * e, special=T * v))
        ops.append(Op("cross_entropy.bwd", "memory", "bwd", 0.0, 2 * T * v * e, special=T * v))
        if t > 1:
            colls.append(Coll("cross_entropy.all_reduce", "all_reduce", "tp", 3 * T * 4, "fwd"))
        params = 2 * h + (0 if M.tied else v * h)
        acts = Tsp * h * e + T * h * e + T * v * e + T * 8
        temps = min(T * v, 1 << 24) * 4 + T * v * e
        return LayerCost(ops, colls, float(params), float(acts), float(temps))


FORMULA = FormulaCosts()
