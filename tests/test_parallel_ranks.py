"""Multi-rank tests of the pieces around the equivalence matrix: the vocab-parallel loss and the
gloo fallbacks, failing together on a bad batch, resuming from engine state, gathering a sharded
model to its serial state dict and back, and a real torchrun launch."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from megacrystal.engine.engine import Engine
from megacrystal.model.transformer import serial_layout
from megacrystal.ops.cross_entropy import cross_entropy_reference
from megacrystal.parallel import collectives as C
from megacrystal.parallel.cross_entropy import vocab_parallel_cross_entropy
from megacrystal.parallel.state import Group
from tests.dist import run_ranks, torchrun
from tests.parallel_cases import LR, data, make_cfg, split

ROOT = Path(__file__).resolve().parents[1]


def _collectives_and_loss(rank, world):
    group = Group("tp", list(range(world)), rank, dist.group.WORLD)
    out = []
    impls = ["torch"] + (["triton"] if importlib.util.find_spec("triton") else [])
    for fallback in (False, True):
        C.FORCE_FALLBACK = fallback
        x = torch.arange(12.0) * (rank + 1)
        shard = torch.empty(6)
        C.reduce_scatter_flat(shard, x.clone(), group)
        out.append(torch.equal(shard, (torch.arange(12.0) * 3)[rank * 6 : (rank + 1) * 6]))
        buf = torch.zeros(8)
        buf[rank * 4 : (rank + 1) * 4] = rank + 1
        C.all_gather_flat(buf, buf[rank * 4 : (rank + 1) * 4], group, async_op=True).wait()
        out.append(torch.equal(buf, torch.tensor([1.0] * 4 + [2.0] * 4)))
        y = torch.arange(2 * 4 * 3.0).view(2, 4, 3)
        out.append(torch.equal(C.all_gather_dim(C.split_dim(y, 1, group), 1, group), y))
        out.append(torch.equal(C.reduce_scatter_dim(y, 1, group), 2 * C.split_dim(y, 1, group)))
        # the vocab-parallel loss against the full-vocabulary reference, chunked
        torch.manual_seed(0)
        logits = torch.randn(2, 5, 128)
        logits[..., 100:] = float("-inf")
        labels = torch.randint(0, 100, (2, 5))
        labels[1, 2] = -100
        w = torch.rand(2, 5)
        ref = logits.clone().requires_grad_()
        lb = cross_entropy_reference(ref, labels)
        (lb * w).sum().backward()
        for impl in impls:  # torch pieces (chunked), and the Triton kernels (interpreted on CPU)
            mine = logits.chunk(world, -1)[rank].clone().requires_grad_()
            la = vocab_parallel_cross_entropy(mine, labels, group, chunk_elements=100, impl=impl)
            (la * w).sum().backward()
            out.append(torch.allclose(la, lb, rtol=1e-6, atol=1e-6))
            out.append(torch.allclose(mine.grad, ref.grad.chunk(world, -1)[rank], rtol=1e-6, atol=1e-7))
    C.FORCE_FALLBACK = False
    return out


def test_collectives_and_vocab_parallel_loss_with_and_without_fallbacks():
    for res in run_ranks(_collectives_and_loss, 2):
        assert all(res), res


def _bad_batch_on_rank_one(rank, world):
    e = Engine(make_cfg([]), torch.device("cpu"))
    mbs = split(data(steps=1)[0], e.grid.dp_rank, e.grid.dp_size, 2)
    if rank == 1:
        mbs[0] = dict(mbs[0], labels=mbs[0]["labels"] + 1000)
    try:
        e.train_step(mbs, LR)
    except ValueError as err:
        return str(err)
    return "trained"


def test_a_bad_batch_on_one_rank_fails_every_rank_without_hanging():
    msgs = run_ranks(_bad_batch_on_rank_one, 2, timeout=120)
    assert "1 rank(s) reported invalid micro-batches" in msgs[0]
    assert "micro_batches[0].labels: id" in msgs[1] and "expected [0, 300) or -100" in msgs[1]


def _resume(rank, world, overrides):
    batches = data(steps=4)
    cfg = make_cfg(overrides)

    def steps(engine, bs):
        g = engine.grid
        return [engine.train_step(split(b, g.dp_rank, g.dp_size, 2), LR)["loss"] for b in bs]

    straight = Engine(cfg, torch.device("cpu"))
    want = steps(straight, batches)
    first = Engine(cfg, torch.device("cpu"))
    steps(first, batches[:2])
    saved = first.state_dict()
    second = Engine(cfg, torch.device("cpu"))
    second.load_state_dict(saved)
    got = steps(second, batches[2:])
    return want[2:], got, straight.full_model_state(), second.full_model_state()


@pytest.mark.parametrize(
    "overrides",
    [
        ["parallel.distributed_optimizer=true", "train.precision=bf16"],  # dp2: sharded masters + moments
        ["parallel.tp=2", "parallel.sequence_parallel=true"],
    ],
)
def test_resuming_from_engine_state_continues_bit_for_bit(overrides):
    res = run_ranks(_resume, 2, (overrides,))
    want, got, a, b = res[0]
    assert want == got
    assert all(torch.equal(a[k], b[k]) for k in a)


def _full_state(rank, world, overrides):
    cfg = make_cfg(overrides)
    e = Engine(cfg, torch.device("cpu"))
    initial = e.full_model_state()
    # a different serial model, given on every rank (each reads its part); full_model_state is on rank 0
    g = torch.Generator().manual_seed(7)
    new = {}
    for k, (shape, true) in serial_layout(e.cfg.model).items():
        new[k] = torch.zeros(shape, dtype=e.dtype)
        new[k][tuple(slice(0, n) for n in true)] = 0.05 * torch.randn(true, generator=g, dtype=e.dtype)
    e.load_full_model_state(new)
    back = e.full_model_state()
    loss = e.eval_loss(split(data(steps=1)[0], e.grid.dp_rank, e.grid.dp_size, 2))
    return initial, new, back, loss


def _serial_reference(overrides, new_state):
    cfg = make_cfg(overrides)
    e = Engine(cfg, torch.device("cpu"))
    init = e.full_model_state()
    e.load_full_model_state(new_state)
    return init, e.eval_loss(split(data(steps=1)[0], 0, 1, 2))


@pytest.mark.parametrize(
    "overrides",
    [
        ["parallel.tp=2", "parallel.pp=2"],  # crystal: tied, biases
        ["model.family=llama", "parallel.tp=2", "parallel.pp=2", "parallel.distributed_optimizer=true"],
    ],
)
def test_sharded_model_gathers_to_the_serial_state_dict_and_back(overrides):
    res = run_ranks(_full_state, 4, (overrides,))
    initial, new, back, loss = res[0]
    assert all(r[0] is None and r[2] is None for r in res[1:])
    serial_init, serial_loss = _serial_reference([o for o in overrides if not o.startswith("parallel.")], new)
    assert set(initial) == set(serial_init)
    for k in serial_init:  # init is seeded by name: the sharded model IS the serial one
        assert torch.equal(initial[k], serial_init[k]), k
        assert torch.equal(back[k], new[k]), k
    assert loss[1] == serial_loss[1] and loss[0] == pytest.approx(serial_loss[0], rel=1e-6)
    assert all(r[3] == loss for r in res)


def test_torchrun_launch_trains_like_one_process(tmp_path):
    overrides = [
        "model.preset=tiny",
        "model.num_layers=2",
        "model.hidden_size=32",
        "model.ffn_hidden_size=64",
        "data.seq_length=16",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        "train.precision=fp64",
        "parallel.tp=2",
        "parallel.sequence_parallel=true",
    ]
    out = tmp_path / "losses.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = (
        torchrun(
            2,
            "megacrystal.engine.smoke",
            "--steps",
            "3",
            "--out",
            str(out),
        )
        + overrides
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, "\n".join(l for l in proc.stderr.splitlines() if " INFO " not in l)[-4000:]
    got = json.loads(out.read_text())
    from megacrystal.engine.smoke import main

    serial = tmp_path / "serial.json"
    assert main(["--steps", "3", "--out", str(serial)] + [o for o in overrides if not o.startswith("parallel.")]) == 0
    want = json.loads(serial.read_text())
    assert [r["layout"]["tp"] for r in got] == [2, 2, 2] and got[0]["world"] == 2
    for a, b in zip(got, want, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-9)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-9)


def test_torchrun_launch_with_a_bad_grid_fails_fast():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = torchrun(
        2,
        "megacrystal.engine.smoke",
        "model.preset=tiny",
        "data.seq_length=16",
        "parallel.pp=4",
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "world size 2 is not divisible by tp*pp=4" in proc.stderr
