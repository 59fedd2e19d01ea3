"""`megacrystal plan` with context parallelism: the cp ring's alpha-beta time against a hand
calculation (hops posted before a block's compute and waited after it, as parallel/ring_attention.py
runs them), cp candidates where the sequence allows, and the gradient reduction and ZeRO over dp x cp."""

from __future__ import annotations

import pytest

from megacrystal.cli import main
from megacrystal.config import load_config
from megacrystal.planner import comm, hardware
from megacrystal.planner.compose import coll_time, record_times
from megacrystal.planner.compute import op_time
from megacrystal.planner.costs import FORMULA
from megacrystal.planner.search import candidates, plan_one
from megacrystal.planner.shapes import Features, LayerShape, Layout, ModelShape

H100 = hardware.get("h100")
LLAMA_8B = ModelShape(32, 4096, 32, 8, 128, 14336, 128256, bias=False, tied=False)


def _by_hand(seq: int, cp: int, world: int):
    """Forward and backward ring seconds (total, exposed) of one layer and micro-batch on an H100 node."""
    T = seq // cp  # tokens this rank holds (tp 1, micro-batch 1)
    kv, dkv = 2 * T * 8 * 128 * 2, 2 * T * 8 * 128 * 4  # K+V in bf16; dK+dV accumulators in fp32
    bw, alpha = 450e9 * 0.8, 1e-6  # NVLink per direction x NCCL efficiency; latency per message
    shape = LayerShape(LLAMA_8B, 1, False, "none", 1, seq, Features(), cp)
    lc = FORMULA.layer(shape)
    attn_f = op_time(next(o for o in lc.ops if o.name == "attn"), H100, "bf16")
    attn_b = op_time(next(o for o in lc.ops if o.name == "attn.bwd"), H100, "bf16")
    fwd_total = (cp - 1) * (kv / bw + alpha)
    fwd_exposed = max(0.0, fwd_total - (cp - 1) / cp * attn_f)  # each hop behind one of cp equal blocks
    inner = (cp - 1) * ((kv + dkv) / bw + alpha)
    last = dkv / bw + alpha  # the accumulator's last hop home: nothing left to hide it
    bwd_exposed = max(0.0, inner - (cp - 1) / cp * attn_b) + last
    return lc, (fwd_total, fwd_exposed), (inner + last, bwd_exposed)


@pytest.mark.parametrize("seq,cp", [(131072, 4), (32768, 2), (4096, 8)])
def test_ring_time_matches_the_hand_calculation(seq, cp):
    lc, (ft, fe), (bt, be) = _by_hand(seq, cp, 8 * cp)
    sp = comm.spans(8, 1, 1, "tp-dp-pp", 8, cp)  # tp1 x cp inside one 8-GPU node
    assert sp["cp"].size == cp and sp["cp"].nodes == 1
    ring = [c for c in lc.colls if c.group == "cp"]
    got = {ph: [coll_time(lc, c, H100, sp, "bf16") for c in ring if c.phase == ph] for ph in ("fwd", "bwd")}
    assert sum(t for t, _ in got["fwd"]) == pytest.approx(ft, rel=1e-12)
    assert sum(t - h for t, h in got["fwd"]) == pytest.approx(fe, rel=1e-12, abs=1e-15)
    assert sum(t for t, _ in got["bwd"]) == pytest.approx(bt, rel=1e-12)
    assert sum(t - h for t, h in got["bwd"]) == pytest.approx(be, rel=1e-12)
    # the step's phases carry exactly the exposed part
    with_ring, _ = record_times(lc, H100, sp, "bf16", "flash")
    lc.colls[:] = [c for c in lc.colls if c.group != "cp"]
    try:
        without, _ = record_times(lc, H100, sp, "bf16", "flash")
    finally:
        FORMULA.layer.cache_clear()
    assert with_ring["fwd"] - without["fwd"] == pytest.approx(fe, rel=1e-9, abs=1e-15)
    assert with_ring["bwd"] - without["bwd"] == pytest.approx(be, rel=1e-9)


def test_long_sequences_hide_the_ring_short_ones_do_not():
    _, (ft, fe), _ = _by_hand(131072, 4, 32)
    assert ft > 0 and fe == 0.0  # 32k tokens per rank: a block computes far longer than a hop
    _, (ft, fe), _ = _by_hand(4096, 8, 64)
    assert 0 < fe < ft  # 512 tokens per rank: a block no longer covers its hop


def test_a_ring_across_nodes_takes_the_network():
    sp = comm.spans(16, 2, 1, "tp-dp-pp", 8, 8)  # tp2 x cp8 = 16 ranks: the ring spans two nodes
    assert sp["cp"].nodes == 2
    assert comm.ring_hop(1e9, sp["cp"], H100) == pytest.approx(1e9 / (50e9 * 0.9) + 5e-6)


def test_cp_candidates_follow_the_sequence_and_reduce_over_dp_x_cp():
    long = load_config("examples/llama_long.yaml", [], validate=False)
    cands, _ = candidates(long, 16, H100)
    assert {lay.cp for lay, _ in cands} == {1, 2, 4, 8, 16}  # 32k: every cp keeps >= 2048 tokens a rank
    crystal = load_config("examples/crystal_7b.yaml", [], validate=False)
    assert {lay.cp for lay, _ in candidates(crystal, 64, H100)[0]} == {1}  # 2k sequences: no cp
    lay = Layout(tp=4, pp=1, vpp=1, dp=2, sp=True, dist_opt=True, mbs=1, recompute="none", cp=2)
    p = plan_one(long, lay, H100)
    names = {c["name"]: c for c in p.collectives}
    assert {"dp_cp.reduce_scatter", "dp_cp.all_gather (ZeRO-1 params)", "cp.p2p"} <= set(names)
    params = LLAMA_8B.total_params(4) / 4  # tp4 shards (the replicated norms are a rounding error here)
    assert p.memory["optimizer"] == pytest.approx(params * 12 / 4, rel=0.01)  # sharded over dp x cp = 4


def test_explain_shows_the_ring(capsys):
    rc = main(
        [
            "plan",
            "--config",
            "examples/llama_long.yaml",
            "--gpus",
            "16",
            "--explain",
            "tp4.cp2.pp1.vpp1.dp2.mbs1.sp.zero.rc-none",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "cp.p2p" in out and "dp_cp.reduce_scatter" in out
