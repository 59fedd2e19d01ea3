"""Memory per device of one layout, from the cost records and the schedule the engine runs:
weights, fp32 gradient buffer, optimizer state (sharded over dp x cp with the distributed optimizer),
activations (the per-micro-batch records times what the rank's schedule holds at its peak, counted
on the schedule itself), communication buffers and the largest temporary. The activation and
temporary figures are the cost source's: measured by the rehearsal (planner/rehearsed.py, the default), or
the formula's (`--cost-source formula`), marked as such."""

from __future__ import annotations

from .pipeline_sim import in_flight


def rank_memory(ctx, r: int) -> dict:
    """Bytes on pipeline rank r; `ctx` is compose's per-layout context."""
    lay, F = ctx.layout, ctx.features
    params = ctx.rank_params[r]
    state = 8 if F.precision == "fp64" else 4
    weights = params * F.param_bytes
    grads = params * max(4, F.param_bytes)  # the main-grad buffer
    optim = params * (F.master_bytes + 2 * state) / (lay.dp * lay.cp if lay.dist_opt else 1)

    def per_chunk(c: int) -> float:
        a = ctx.layers_per_chunk * ctx.layer.activations
        vs = c * lay.pp + r
        if vs == 0:
            a += ctx.emb.activations
        if vs == lay.pp * lay.vpp - 1:
            a += ctx.head.activations
        return a

    acts = in_flight(lay.pp, lay.vpp, ctx.m, r, per_chunk)
    last = r == lay.pp - 1
    temps = max(ctx.layer.temporaries, ctx.head.temporaries if last else 0.0, ctx.emb.temporaries if r == 0 else 0.0)
    if ctx.measured:  # the rest of the step (reduction, norm, optimizer) peaks without the activations:
        # its transient per parameter, over what the optimizer holds on this rank (the shard under ZeRO)
        upd = ctx.layer.measured.get("update_per_param", 0.0) * params / (lay.dp * lay.cp if lay.dist_opt else 1)
        temps = max(temps, upd - acts)
    comm = 2 * ctx.p2p_bytes if lay.pp > 1 else 0.0
    if not ctx.measured:  # the formula also counts two gradient buckets in flight; a rehearsal sees the
        comm += 2 * ctx.bucket_elems * max(4, F.param_bytes)  # engine reduce them in place (views of the buffer)
    return dict(weights=weights, grads=grads, optimizer=optim, activations=acts, comm_buffers=comm, temporaries=temps)


def peak(ctx) -> tuple[dict, int]:
    """The rank with the most memory, and its parts."""
    best, who = None, 0
    for r in range(ctx.layout.pp):
        m = rank_memory(ctx, r)
        if best is None or sum(m.values()) > sum(best.values()):
            best, who = m, r
    return best, who
