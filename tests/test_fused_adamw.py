"""The fused AdamW's plumbing on the CPU: chunk tables over the flat buffers (ZeRO-1 shards on 2 real
gloo ranks, replicated buckets), muP groups, the clip coefficient folded into the step, the bf16
model copy, the non-finite flag and the state dicts, with `adamw_flat_reference` (the CUDA kernel's
contract in torch) standing in for the kernel. Against the torch paths the parameters and the
optimizer state must be identical (the same foreach arithmetic, element for element). The CUDA
kernel itself is compared with torch by megacrystal/kernel_checks.py (tests/test_cuda_kernels_gpu.py, doctor --verify)."""

import math

import pytest
import torch

from megacrystal.engine.engine import Engine
from megacrystal.optim.adamw import AdamW
from megacrystal.optim.factory import clip_and_step
from megacrystal.optim.fused_adamw import CHUNK, FusedAdamW, adamw_flat_reference, chunk_table
from megacrystal.parallel.grad_buffers import GradBuffers
from megacrystal.parallel.state import build_grid
from tests.dist import run_ranks
from tests.parallel_cases import data, make_cfg, split

LR = 3e-3


def _engine(overrides, fused: bool) -> Engine:
    e = Engine(make_cfg(overrides), torch.device("cpu"))
    if fused:
        o = e.cfg.optim
        overlap = e.cfg.parallel.overlap_param_gather
        e.optimizer = FusedAdamW(
            e.buffers,
            e._param_groups(),
            o.beta1,
            o.beta2,
            o.eps,
            names=e._names,
            kernel=adamw_flat_reference,
            overlap_param_gather=overlap,
        )
        if overlap and e.optimizer.param_gather is not None:  # what Engine does for its own optimizer
            e.optimizer.param_gather.install(e.chunks)
    return e


def _run(overrides, fused: bool, steps: int = 3):
    e = _engine(overrides, fused)
    g = e.grid
    for b in data(steps=steps):
        e.train_step(split(b, g.dp_rank, g.dp_size, e.cfg.train.micro_batch_size), LR)
    e.sync_params()  # the parameters are read directly: the all-gathers left to the next forward complete
    params = {n: p.detach().clone() for m in e.chunks for n, p in m.named_parameters()}
    return e, params


def _same_params(a: dict, b: dict) -> list[str]:
    return [n for n in a if not torch.equal(a[n], b[n])]


def _same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_chunk_table_splits_long_segments_and_keeps_groups():
    t = chunk_table([(0, 10, 0), (10, CHUNK + 5, 1), (CHUNK + 15, 3, 0)])
    assert t == [(0, 10, 0), (10, CHUNK, 1), (10 + CHUNK, 5, 1), (CHUNK + 15, 3, 0)]


def _zero_ranks(rank, world):
    # clip_grad small enough that every step clips: the coefficient is folded into the fused step.
    # The fused path leaves its parameter all-gathers to the next forward (overlap_param_gather, the
    # default); the torch path waits for them in its step: the runs must be identical all the same.
    ov = ["parallel.distributed_optimizer=true", "train.precision=bf16", "optim.clip_grad=0.05"]
    ref, want = _run(ov + ["parallel.overlap_param_gather=false"], fused=False, steps=2)
    got_e, got = _run(ov, fused=True, steps=2)
    # resume a torch-path shard with the fused optimizer (and back): the formats are one
    other = _engine(ov, fused=True)
    other.load_state_dict(ref.state_dict())
    same_resume = _same_state(other.optimizer.state_dict(), ref.optimizer.state_dict())
    # a NaN in rank 1's shard only: both ranks skip the update (the flag is agreed over the world)
    if rank == 1:
        other.buffers.grad_buffer[other.optimizer.shards[0]["lo"]] = float("nan")
    stepped = clip_and_step(other.optimizer, other.buffers, 1.0, 1.0, LR)
    diff, same_state = _same_params(want, got), _same_state(ref.optimizer.state_dict(), got_e.optimizer.state_dict())
    return diff, same_state, same_resume, stepped


def test_fused_matches_distributed_optimizer_on_zero_shards():
    for diff, same_state, same_resume, stepped in run_ranks(_zero_ranks, 2, timeout=240):
        assert diff == [] and same_state and same_resume and not stepped


def _replicated(fused: bool, precision):
    from tests.model_util import tiny_model

    cfg, model = tiny_model(seed=3)
    model = model.to(precision).train()
    grid = build_grid(make_cfg([]))
    named = list(model.named_parameters())
    buffers = GradBuffers(named, grid, bucket_size_mb=0.01, contiguous_params=fused)
    from megacrystal.model.mup import param_groups

    groups = param_groups(model, cfg, 0.1)
    names = {id(p): n for n, p in named}
    opt = FusedAdamW(buffers, groups, names=names, kernel=adamw_flat_reference) if fused else AdamW(groups, names=names)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        tokens = torch.randint(0, cfg.vocab_size, (2, 17), generator=gen)
        buffers.start_step(1)
        model(tokens=tokens[:, :-1], labels=tokens[:, 1:]).sum().backward()
        buffers.finish()
        opt.step(LR)
    return model, opt, len(groups)


@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float32])
def test_fused_matches_replicated_adamw_and_its_state_dict(precision):
    m_ref, o_ref, n_groups = _replicated(False, precision)
    m_got, o_got, _ = _replicated(True, precision)
    assert not o_got.nonfinite()
    assert n_groups > 1  # muP: several LR groups in one flat buffer
    assert _same_params(dict(m_ref.named_parameters()), dict(m_got.named_parameters())) == []
    sd_ref, sd_got = o_ref.state_dict(), o_got.state_dict()
    assert sd_got["kind"] == "adamw" and _same_state(sd_ref, sd_got)
    o_got.load_state_dict(sd_ref)  # and it loads what the torch path saved
    assert _same_state(o_got.state_dict(), sd_ref)


def test_a_nonfinite_gradient_skips_the_fused_step_and_changes_no_state():
    e = _engine(["parallel.distributed_optimizer=true"], fused=True)
    params, state = e.buffers.param_buffer.clone(), _clone(e.optimizer.state_dict())
    e.buffers.grad_buffer[3] = float("nan")
    # a finite norm that did not see it (e.g. a replica the norm does not count): the flag decides
    assert not clip_and_step(e.optimizer, e.buffers, 1.0, 1.0, LR)
    assert e.optimizer.skipped_last and e.optimizer.step_count == 0
    assert torch.equal(e.buffers.param_buffer, params) and _same_state(e.optimizer.state_dict(), state)
    assert e.optimizer.nonfinite()
    assert not e.optimizer.nonfinite()  # reading clears it
    e.buffers.grad_buffer.zero_()
    assert clip_and_step(e.optimizer, e.buffers, 0.0, 1.0, LR) and e.optimizer.step_count == 1


def _nan_on_a_replica(rank, world):
    e = _engine(["parallel.tp=2", "parallel.distributed_optimizer=true"], fused=True)  # dp1: whole buckets
    g = e.grid
    if rank == 1:  # tp rank 1's copy of a replicated norm weight: the global norm does not count it
        dict(e.chunks[0].named_parameters())["layers.0.norm1.weight"].register_hook(lambda x: x * float("nan"))
    params = e.buffers.param_buffer.clone()
    out = e.train_step(split(data(steps=1)[0], g.dp_rank, g.dp_size, e.cfg.train.micro_batch_size), LR)
    unchanged = torch.equal(e.buffers.param_buffer, params) and e.optimizer.step_count == 0
    return out["skipped"], math.isfinite(out["grad_norm"]), unchanged


def test_the_engine_reports_a_nonfinite_gradient_the_norm_missed_as_a_skipped_step():
    assert run_ranks(_nan_on_a_replica, 2, timeout=240) == [(True, True, True)] * 2


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj
