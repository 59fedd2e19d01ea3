"""Overlapped communication (docs/parallelism.md, "What overlaps what"): ZeRO-1's parameter all-gather
left to the next forward, pipeline transfers waited for at use. Each mechanism on and off gives the
serial run in fp64 within 1e-9; the pipeline also with activations and gradients on
one tag (messages paired by order alone, as NCCL pairs them); and the gathers really are pending after
a step and waited for, bucket by bucket in forward order, by the next forward's pre-hooks."""

import pytest
import torch

from megacrystal.engine.engine import Engine
from megacrystal.parallel import collectives as C
from megacrystal.parallel.p2p import P2P
from tests.dist import run_ranks
from tests.parallel_cases import FP64, compare, data, make_cfg, run_configs, serial_key, split, train

ZERO = ["parallel.distributed_optimizer=true"]
OFF = ["parallel.overlap_param_gather=false", "parallel.overlap_p2p_comm=false"]
VPP = ["model.num_layers=8", "train.micro_batch_size=1", "parallel.vpp=2"]


def _check(world: int, configs: list[list[str]], rank_fn=run_configs) -> None:
    configs = [FP64 + c for c in configs]
    batches = data()
    results = run_ranks(rank_fn, world, (configs, batches), timeout=900)
    refs, problems = {}, []
    for i, c in enumerate(configs):
        key = serial_key(c)
        if key not in refs:
            refs[key] = train(list(key), batches)
        problems += compare(" ".join(c), refs[key], [r[i] for r in results], list(key))
    assert not problems, "\n".join(problems)


def test_overlap_equals_the_serial_run_with_zero_pp_vpp():
    _check(
        4,
        [
            ZERO + ["parallel.pp=2"],  # dp2 x pp2: gathers behind the 1F1B forwards, tied copy
            ZERO + VPP + ["parallel.pp=2"],  # the gathers follow the chunk order
        ],
    )


@pytest.mark.slow
def test_overlap_on_and_off_rest_of_matrix():
    _check(
        4,
        [
            ZERO + ["parallel.pp=2"] + OFF,
            VPP + ["parallel.pp=4"] + OFF[1:],
            ZERO + ["parallel.tp=2", "parallel.sequence_parallel=true", "model.recompute=selective"],
            ZERO + ["parallel.tp=2", "parallel.sequence_parallel=true", "model.recompute=selective"] + OFF,
        ],
    )


def _nccl_order(rank, world, configs, batches):
    P2P.NCCL_ORDER = True
    return run_configs(rank, world, configs, batches)


def test_pipeline_transfers_follow_nccl_rules():
    """Messages paired by order alone and each batch complete before the next (`P2P.NCCL_ORDER`); pp=2
    with interleaving is the layout where both kinds of message share a link."""
    _check(2, [VPP + ["parallel.pp=2"], VPP + ["parallel.pp=2"] + OFF[1:], ["parallel.pp=2"]], _nccl_order)


@pytest.mark.slow
def test_pipeline_transfers_follow_nccl_rules_on_four_stages():
    _check(4, [VPP + ["parallel.pp=4"], ["parallel.pp=4"], VPP + ["parallel.pp=4"] + OFF[1:]], _nccl_order)


def _gather_events(rank, world, overlap: bool):
    cfg = make_cfg(FP64 + ZERO + [f"parallel.overlap_param_gather={str(overlap).lower()}"])
    e = Engine(cfg, torch.device("cpu"))
    gather = e.optimizer.param_gather
    events = []
    C.observe(lambda ev, h: events.append((ev, h.info.get("bucket"))) if h.kind == "param_gather" else None)
    batches = [split(b, e.grid.dp_rank, e.grid.dp_size, cfg.train.micro_batch_size) for b in data(steps=2)]
    e.train_step(batches[0], 1e-3)
    pending_after_step = sorted(gather.pending)
    issued = [b for ev, b in events if ev == "issue"]
    events.clear()
    e.train_step(batches[1], 1e-3)  # its forward waits for step 1's gathers
    waits_in_step2 = [b for ev, b in events if ev == "wait"][: len(issued)]
    e.sync_params()
    C.observe(None)
    return dict(
        pending=pending_after_step,
        issued=issued,
        order=list(gather.order),
        waits=waits_in_step2,
        left=sorted(gather.pending),
        n_buckets=len(e.buffers.buckets),
    )


def test_parameter_gathers_wait_for_the_next_forward_in_forward_order():
    on = run_ranks(_gather_events, 2, (True,), timeout=300)[0]
    assert on["n_buckets"] > 3  # the tiny bucket size of the test configs: several buckets
    assert on["issued"] == on["order"]  # issued in the order the forward uses the buckets
    assert on["pending"] == sorted(on["order"])  # none waited for by the optimizer step
    assert on["waits"] == on["order"]  # each waited for by the pre-hook of its first unit, in turn
    assert on["left"] == []
    off = run_ranks(_gather_events, 2, (False,), timeout=300)[0]
    assert off["pending"] == [] and off["issued"] == off["order"]
