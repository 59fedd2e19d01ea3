"""The interleaved 1F1B order is an explicit table; it is printed here and checked against Megatron's
published order, and a real pp=2 vpp=2 run on two gloo ranks is shown to compute exactly that table."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from megacrystal.parallel.pipeline_schedules import Entry, forward_order, interleaved_table, warmup_forwards
from tests.parallel_cases import data, make_cfg, split

# Narayanan et al. 2021 (arXiv 2104.04473), Megatron-LM: with pp=2, vpp=2 and 4 micro-batches, pipeline
# rank 0 runs micro-batches 0,1 through its chunk 0, then through chunk 1, then 2,3 through chunk 0
# (warm-up: 2*(pp-1-r) + (vpp-1)*pp = 4 forwards), then 1F1B, the backwards going through the chunks in
# reverse. Written out by hand: F<micro-batch>.<chunk>, B<micro-batch>.<chunk>.
PP2_VPP2_M4 = {
    0: "F0.0 F1.0 F0.1 F1.1 F2.0 B0.1 F3.0 B1.1 F2.1 B0.0 F3.1 B1.0 B2.1 B3.1 B2.0 B3.0",
    1: "F0.0 F1.0 F0.1 B0.1 F1.1 B1.1 F2.0 B0.0 F3.0 B1.0 F2.1 B2.1 F3.1 B3.1 B2.0 B3.0",
}


def show(pp: int, vpp: int, m: int) -> str:
    return "\n".join(f"pp rank {r}: " + " ".join(map(str, interleaved_table(pp, r, vpp, m))) for r in range(pp))


def test_table_printed_and_equal_to_the_published_example():
    print(f"\ninterleaved 1F1B, pp=2 vpp=2, 4 micro-batches\n{show(2, 2, 4)}")
    print(f"interleaved 1F1B, pp=4 vpp=2, 8 micro-batches\n{show(4, 2, 8)}")
    for r, want in PP2_VPP2_M4.items():
        assert " ".join(map(str, interleaved_table(2, r, 2, 4))) == want


@pytest.mark.parametrize("pp,vpp,m", [(2, 2, 4), (2, 3, 6), (4, 2, 8), (4, 2, 4), (4, 3, 12), (3, 2, 3)])
def test_table_matches_megatron_core(pp, vpp, m):
    """Megatron-core's own schedule functions (pure Python, no GPU) as the oracle: its schedule table
    (micro-batch, chunk) per virtual micro-batch, and its warm-up count per rank."""
    mc = pytest.importorskip("megatron.core.pipeline_parallel.schedules")
    order = mc.get_schedule_table(m, vpp, pp)  # micro-batch groups of pp per virtual stage (its default)
    assert forward_order(pp, vpp, m) == [tuple(x) for x in order]
    for r in range(pp):
        group = SimpleNamespace(size=lambda: pp, rank=lambda r=r: r)
        comm = SimpleNamespace(pp_group=group, virtual_pipeline_model_parallel_size=vpp)
        total, _, warmup, remaining = mc.get_pp_rank_microbatches(m, vpp, pp, p2p_communicator=comm)
        assert warmup == warmup_forwards(pp, r, vpp, m)
        fwd = [Entry("F", mb, c) for mb, c in order]
        bwd = [Entry("B", mb, vpp - 1 - c) for mb, c in order]
        want = fwd[:warmup] + [e for i in range(remaining) for e in (fwd[warmup + i], bwd[i])] + bwd[remaining:]
        table = interleaved_table(pp, r, vpp, m)
        assert len(table) == 2 * total and table == want, f"rank {r}:\n{show(pp, vpp, m)}"


def _traced(rank: int, world: int, batches: list[dict]) -> list[tuple]:
    from megacrystal.engine.engine import Engine

    cfg = make_cfg(["model.num_layers=8", "train.micro_batch_size=1", "parallel.pp=2", "parallel.vpp=2"])
    engine = Engine(cfg, torch.device("cpu"))
    engine.trace = []
    engine.train_step(split(batches[0], 0, 1, 1)[:4], 1e-3)
    return [(kind, mb, chunk) for kind, chunk, mb, *_ in engine.trace if kind in "FB"]


def test_a_real_run_computes_the_table():
    from tests.dist import run_ranks

    got = run_ranks(_traced, 2, (data(steps=1),), timeout=300)
    assert len(got) == 2
    for r, seq in enumerate(got):
        assert seq == [(e.kind, e.microbatch, e.chunk) for e in interleaved_table(2, r, 2, 4)]
