"""One layout's step, composed from the cost records of its distinct layer shapes.

Per micro-batch and chunk: the layers' operations timed by `compute`, plus the tensor-parallel
collectives, which the engine runs synchronously in the compute stream (exposed; a feature may hide
one behind a named GEMM). The pipeline is simulated from the engine's schedules (`pipeline_sim`),
with p2p times from the rank placement. Then, per pipeline rank, the data-parallel gradient buckets:
cut as `parallel/grad_buffers.py` cuts them (reverse registration order, `bucket_size_mb`), each
launched when its last gradient arrives in the last micro-batch's backward and run one after
another on the communication stream (`overlap_grad_reduce`), the tail after the backward exposed;
the tied-embedding sum and the sequence-parallel gradient sum, synchronous; the gradient norm; the
optimizer step (memory-bound over this rank's shard); ZeRO-1's parameter all-gather after it,
exposed (behind the next forward with `overlap_param_gather`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..parallel.state import group_ranks
from . import comm
from .compute import device_time, op_named, phase_times
from .costs import FORMULA, CostSource
from .memory import peak
from .pipeline_sim import simulate
from .shapes import Features, LayerShape, Layout, ModelShape

# Optimizer bytes per parameter: the update (over the shard), then the norm read and the zeroing
# of the whole local gradient buffer. fused: the CUDA AdamW (grad, master, m, v in; master, m, v,
# bf16 param out = 30 B); foreach: torch's _foreach AdamW (decay, lerp, mul, addcmul, sqrt, div,
# add, addcdiv: 80 B) plus the master -> bf16 copy (6 B).
OPT_BYTES = {"fused": 30.0, "foreach": 86.0}


@dataclass
class Plan:
    layout: Layout
    hardware: str
    step_s: float
    tokens_per_step: int
    gpus: int
    mfu: float
    memory: dict
    memory_rank: int
    fits: bool
    bubble: float
    exposed_comm_s: float
    compute: dict  # op class -> seconds on the critical rank
    collectives: list  # dicts: name, group, algo, total_s, exposed_s, hidden_s
    sources: dict = field(default_factory=dict)
    exact: bool = True  # False: step_s is only a lower bound (compute alone; the pipeline was not simulated)

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_step / self.step_s / self.gpus

    @property
    def memory_bytes(self) -> float:
        return sum(self.memory.values())


@dataclass
class _Ctx:
    layout: Layout
    features: Features
    m: int
    layer: object
    emb: object
    head: object
    layers_per_chunk: int
    rank_params: list
    p2p_bytes: float
    bucket_elems: int
    measured: bool = False  # the records come from a rehearsal: memory as it counts it


# Where each collective of the simulated step is issued and waited on (`--explain`), as the engine does it.
WHERE = dict(
    grad_overlap="issued per bucket as its last gradient is ready in the last micro-batch's backward; "
    "waited before the optimizer step (hidden behind the rest of that backward)",
    grad="issued and waited after the backward (gloo: the buckets run synchronously)",
    after_backward="after the backward: issued and waited at once",
    params_overlap="issued per bucket once the optimizer has updated its shard; waited by a forward pre-hook "
    "before the bucket's first use in the next step (hidden behind the forward that comes before it)",
    params="issued per bucket in the optimizer step; all waited at its end (exposed)",
    ring="each ring hop posted before a block's attention and waited after it; the last dK/dV hop exposed",
    p2p_overlap="receives posted before the compute that does not need them, waited where their data is used; "
    "sends waited at the next exchange (exposed: the wait the simulated schedule still has)",
    p2p="batched and waited at once (exposed: the simulated transfer time)",
)


def coll_time(cost, c, hw, sp: dict, prec: str) -> tuple[float, float]:
    """(total, hidden) seconds of one record's collective `c` per layer and micro-batch: its calls on
    the group's span, hidden up to `hide_frac` of the op that runs beside it (the cp ring's hops behind
    the attention blocks; Megatron's tp all-reduce behind the weight-gradient GEMM)."""
    total = comm.collective(c.kind, c.nbytes, sp[c.group], hw) * c.count
    if not c.hidden_by:
        return total, 0.0
    return total, min(total, c.hide_frac * op_named(cost, c.hidden_by, c.phase, hw, prec))


def record_times(cost, hw, sp: dict, prec: str, attn: str) -> tuple[dict, dict]:
    """(phase -> seconds incl. the exposed part of the record's collectives, phase -> {class: seconds})."""
    pt = phase_times(cost, hw, prec, attn)
    t = {ph: device_time(pt.get(ph, {}), hw) for ph in ("fwd", "recompute", "bwd")}
    cls = {ph: dict(pt.get(ph, {})) for ph in ("fwd", "recompute", "bwd")}
    for c in cost.colls:
        total, hidden = coll_time(cost, c, hw, sp, prec)
        t[c.phase] += total - hidden
        key = "cp_comm" if c.group == "cp" else "tp_comm"
        cls[c.phase][key] = cls[c.phase].get(key, 0.0) + total - hidden
    return t, cls


def sources_of(source, lc, ec, hc) -> dict:
    """Where a plan's figures came from: the source's lines, and each record's own (a rehearsal that
    failed for a shape leaves that shape's record to the formula, said here)."""
    recs = dict(layer=lc, embedding=ec, head=hc)
    fallback = [f"{k}: {r.source}" for k, r in recs.items() if r.source.startswith("formula") and source is not FORMULA]
    out = dict(flops=source.flops_from, memory=source.memory_from if not fallback else "; ".join(fallback))
    out["records"] = {k: dict(source=r.source, **r.measured) for k, r in recs.items()}
    return out


def compose(
    model: ModelShape,
    layout: Layout,
    features: Features,
    hw,
    seq: int,
    global_batch: int,
    source: CostSource = FORMULA,
    model_flops_per_token: float | None = None,
    limit: float | None = None,
) -> Plan:
    """The step of `layout`. With `limit`, a layout whose compute alone exceeds it is not simulated:
    its plan carries that lower bound (`exact` False) and the memory, which need no simulation."""
    lay, F = layout, features
    m = global_batch // (lay.mbs * lay.dp)
    if m < 1 or global_batch % (lay.mbs * lay.dp):
        raise ValueError(f"global batch {global_batch} is not a multiple of mbs*dp = {lay.mbs * lay.dp}")
    shape = LayerShape(model, lay.tp, lay.sp and lay.tp > 1, lay.recompute, lay.mbs, seq, F, lay.cp)
    lc, ec, hc = source.layer(shape), source.embedding(shape), source.head(shape)
    world = lay.gpus
    gpn = min(hw.gpus_per_node, world) if world > 1 else 1
    sp = comm.spans(world, lay.tp, lay.pp, lay.order, gpn, lay.cp)
    rep = lay.dp * lay.cp  # the replicas: gradients reduced and the distributed optimizer sharded over dp x cp
    prec, attn = F.precision, F.attention
    colls: dict = {}

    def add_coll(name, group, algo, total, exposed, count=1.0, where=""):
        c = colls.setdefault(name, dict(name=name, group=group, algo=algo, total_s=0.0, exposed_s=0.0, where=where))
        c["total_s"] += total * count
        c["exposed_s"] += exposed * count

    lt, lcls = record_times(lc, hw, sp, prec, attn)
    et, ecls = record_times(ec, hw, sp, prec, attn)
    ht, hcls = record_times(hc, hw, sp, prec, attn)
    nvs = lay.pp * lay.vpp
    Lc = model.layers // nvs

    def chunk_time(r: int, kind: str, c: int) -> float:
        vs = c * lay.pp + r
        if kind == "F":
            t = Lc * lt["fwd"] + (et["fwd"] if vs == 0 else 0.0) + (ht["fwd"] if vs == nvs - 1 else 0.0)
        else:
            t = Lc * (lt["bwd"] + lt["recompute"])
            t += (et["bwd"] + et["recompute"]) if vs == 0 else 0.0
            t += (ht["bwd"] + ht["recompute"]) if vs == nvs - 1 else 0.0
        return t

    # pipeline transfers
    e = F.param_bytes
    msg = shape.tokens // (lay.tp if shape.sp else 1) * model.hidden * e
    pp_ranks = group_ranks(world, lay.tp, lay.pp, lay.order, lay.cp)["pp"][0]
    hop_cache: dict = {}

    def transfer(src: int, dst: int) -> float:
        key = (src, dst)
        if key not in hop_cache:
            intra = comm.same_node(pp_ranks[src], pp_ranks[dst], gpn)
            if F.p2p_scatter_gather and lay.tp > 1 and not intra and not shape.sp:
                hop_cache[key] = comm.p2p(msg / lay.tp, False, hw) + comm.all_gather(msg, sp["tp"], hw)
            else:
                hop_cache[key] = comm.p2p(msg, intra, hw)
        return hop_cache[key]

    # parameters per rank and chunk (reverse registration order is reverse chunk order)
    def chunk_params(r: int, c: int) -> float:
        vs = c * lay.pp + r
        p = Lc * lc.params + (ec.params if vs == 0 else 0.0) + (hc.params if vs == nvs - 1 else 0.0)
        return p

    tied_copy = model.tied and lay.pp > 1
    tied_elems = ec.params if tied_copy else 0.0
    rank_params = [
        sum(chunk_params(r, c) for c in range(lay.vpp)) + (tied_elems if r == lay.pp - 1 else 0.0)
        for r in range(lay.pp)
    ]
    cap = max(1, int(F.bucket_mb * 2**20 / 4))
    ctx = _Ctx(lay, F, m, lc, ec, hc, Lc, rank_params, msg, cap, bool(getattr(source, "measured", False)))
    mem, mem_rank = peak(ctx)
    tokens = global_batch * seq
    fits = sum(mem.values()) <= hw.usable_bytes
    # Lower bound of the span: rank r's own work, plus the chain of virtual stages before its first
    # forward (micro-batch 0) and after its last backward (micro-batch m-1, chunk 0); exact for
    # equal stages without transfers. Plus what every step pays after the pipeline.
    fb = [[chunk_time(vs % lay.pp, k, vs // lay.pp) for k in "FB"] for vs in range(nvs)]
    bound = max(
        sum(sum(fb[vs]) for vs in range(r)) + m * sum(sum(fb[c * lay.pp + r]) for c in range(lay.vpp))
        for r in range(lay.pp)
    )
    bound += hw.step_overhead_s + min(
        OPT_BYTES[F.optimizer] * p / (rep if lay.dist_opt else 1) for p in rank_params
    ) / (hw.hbm_bw * hw.mem_eff)
    if limit is not None and bound > limit:
        return Plan(
            lay,
            hw.key,
            bound,
            tokens,
            world,
            0.0,
            mem,
            mem_rank,
            fits,
            float("nan"),
            float("nan"),
            {},
            [],
            sources=sources_of(source, lc, ec, hc),
            exact=False,
        )

    pipe = simulate(lay.pp, lay.vpp, m, chunk_time, transfer, blocking=not F.overlap_p2p)
    gb = F.grad_bytes
    dp_span = sp["dp_cp"]

    def bucket_time(elems: float) -> tuple[float, str]:
        if lay.dist_opt:
            padded = math.ceil(elems / (rep * 64)) * rep * 64
            return comm.reduce_scatter(padded * gb, dp_span, hw), "ring"
        return comm.all_reduce(elems * gb, dp_span, hw)

    finish, dp_info = [], []
    for r in range(lay.pp):
        tl = pipe.ranks[r]
        end = tl.end_s
        # ready time of each gradient element position, chunk by chunk in backward order
        pieces = []  # (elements, ready-start, ready-end) in reverse registration order
        for c in reversed(range(lay.vpp)):
            t0, t1 = tl.last("B", c)
            pieces.append((chunk_params(r, c), t0, t1))
        comm_end, total, algo = 0.0, 0.0, "none"
        if rep > 1:
            acc, stream = 0.0, (0.0 if F.overlap_grad_reduce else end)
            for i, (n, t0, t1) in enumerate(pieces):
                off = 0.0
                while off < n:
                    take = min(n - off, cap - acc)
                    off += take
                    acc += take
                    if acc >= cap or (off >= n and i == len(pieces) - 1):
                        ready = t0 + (t1 - t0) * off / n if F.overlap_grad_reduce else end
                        d, algo = bucket_time(acc)
                        stream = max(stream, ready) + d
                        total += d
                        acc = 0.0
            comm_end = stream
        exposed = max(0.0, comm_end - end)
        # the tied-embedding copy: summed over the embedding group, then its own dp bucket, in finish()
        tied_s = 0.0
        if tied_copy and r in (0, lay.pp - 1):
            tied_s = comm.all_reduce(tied_elems * gb, sp["embedding"], hw)[0]
            tied_s += bucket_time(tied_elems)[0] if rep > 1 else 0.0
        finish.append(end + exposed + tied_s)
        dp_info.append((total, exposed, algo, tied_s))
    crit = max(range(lay.pp), key=lambda r: finish[r])
    dp_total, dp_exposed, dp_algo, tied_s = dp_info[crit]
    if rep > 1:
        g = "dp_cp" if lay.cp > 1 else "dp"
        add_coll(
            f"{g}.reduce_scatter" if lay.dist_opt else f"{g}.all_reduce",
            g,
            dp_algo,
            dp_total,
            dp_exposed,
            where=WHERE["grad_overlap" if F.overlap_grad_reduce else "grad"],
        )
    if tied_s:
        add_coll("embedding.all_reduce (tied copy)", "embedding", "ring", tied_s, tied_s, where=WHERE["after_backward"])

    post = 0.0
    # sequence-parallel gradients (norms, row biases) summed over tp, one flat all-reduce
    if shape.sp:
        n_sp = (Lc * lay.vpp) * (4 + (2 if model.bias else 0)) * model.hidden
        t = comm.all_reduce(n_sp * gb, sp["tp"], hw)[0]
        post += t
        add_coll("tp.all_reduce (sequence-parallel grads)", "tp", "ring", t, t, where=WHERE["after_backward"])
    norm = comm.all_reduce(8, sp["world"], hw)[0] if world > 1 else 0.0
    post += norm
    params = rank_params[crit]
    shard = params / (rep if lay.dist_opt else 1)
    # + gradient-norm read, clipping (the whole buffer scaled when the norm exceeds clip_grad; counted
    # every step, as early in training) and the zeroing at the next step's start: 4 + 8 + 4 B
    opt_bytes = OPT_BYTES[F.optimizer] * (1 if F.master_bytes else 0.9) * shard + 16 * params
    opt_s = opt_bytes / (hw.hbm_bw * hw.mem_eff)
    post += opt_s
    if lay.dist_opt and rep > 1:
        g = comm.all_gather(params * F.param_bytes, dp_span, hw)
        first_fwd = sum(chunk_time(crit, "F", c) for c in range(lay.vpp))
        hidden = min(g, first_fwd) if F.overlap_param_gather else 0.0
        post += g - hidden
        name = "dp_cp" if lay.cp > 1 else "dp"
        where = WHERE["params_overlap" if F.overlap_param_gather else "params"]
        add_coll(f"{name}.all_gather (ZeRO-1 params)", name, "ring", g, g - hidden, where=where)
    sync = 2 * comm.all_reduce(16, sp["world"], hw)[0] if world > 1 else 0.0  # batch check, loss
    post += sync + hw.step_overhead_s
    step = finish[crit] + post

    # tensor-parallel and pipeline communication, counted on the critical rank
    counts = pipe.ranks[crit].counts
    n_f = sum(v for (k, _c), v in counts.items() if k == "F")
    n_b = sum(v for (k, _c), v in counts.items() if k == "B")
    for c in lc.colls:
        total, hidden = coll_time(lc, c, hw, sp, prec)
        count = (n_f if c.phase == "fwd" else n_b) * Lc
        if c.kind == "p2p":
            algo = "p2p"
        else:
            algo = comm.all_reduce(c.nbytes, sp[c.group], hw)[1] if c.kind == "all_reduce" else "ring"
        if c.group == "cp":
            where = WHERE["ring"]
        elif c.hidden_by:
            where = f"inside each layer ({c.phase}), behind {c.hidden_by} (tp_overlap_wgrad)"
        else:
            where = f"inside each layer ({c.phase}): issued and waited at once"
        add_coll(f"{c.group}.{c.kind}", c.group, algo, total, total - hidden, count, where=where)
    if lay.pp > 1:
        x = pipe.ranks[crit].xfer_s  # waiting for a peer is bubble, not communication
        add_coll("pp.p2p", "pp", "p2p", x, x, where=WHERE["p2p_overlap" if F.overlap_p2p else "p2p"])

    compute: dict = {}
    for (k, c), count in counts.items():
        vs = c * lay.pp + crit
        parts = [(lcls, Lc)] + ([(ecls, 1)] if vs == 0 else []) + ([(hcls, 1)] if vs == nvs - 1 else [])
        phases = ("fwd",) if k == "F" else ("bwd", "recompute")
        for cls_t, n in parts:
            for ph in phases:
                for key, v in cls_t[ph].items():
                    if key in ("tp_comm", "cp_comm") or (key == "host" and hw.async_launch):
                        continue  # tp collectives are listed with the collectives; a GPU's host runs ahead
                    compute[key] = compute.get(key, 0.0) + count * n * v
    compute["optimizer"] = opt_s

    exposed_comm = sum(c["exposed_s"] for c in colls.values())
    mfu = (model_flops_per_token or 0.0) * tokens / (step * world * hw.peak_flops(prec))
    return Plan(
        layout=lay,
        hardware=hw.key,
        step_s=step,
        tokens_per_step=tokens,
        gpus=world,
        mfu=mfu,
        memory=mem,
        memory_rank=mem_rank,
        fits=fits,
        bubble=pipe.bubble if lay.pp > 1 else 0.0,
        exposed_comm_s=exposed_comm,
        compute=compute,
        collectives=list(colls.values()),
        sources=sources_of(source, lc, ec, hc),
    )
