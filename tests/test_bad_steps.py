"""Non-finite steps: skipped by every rank with no state change, counted, the run stopped after
`train.max_skipped_steps` in a row, and never a checkpoint holding NaN/Inf.

The non-finite values are real: a gradient hook (engine tests) or a forward hook on the real model
(trainer tests) produces inf, or a parameter is set to inf."""

from __future__ import annotations

import json
import math

import pytest
import torch

from megacrystal.engine.engine import Engine
from megacrystal.train.finite import state_is_finite
from megacrystal.train.lr_schedule import Schedule
from tests.dist import run_ranks
from tests.parallel_cases import LR, data, make_cfg, split
from tests.test_train_loop import data_dir, read_metrics, run_config, train_cli  # noqa: F401 (fixture)

# ------------------------------------------------------------------ engine, real gloo ranks


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _inf_gradient_on_one_rank(rank, world, configs):
    out = []
    for overrides in configs:
        batches = data(steps=3)
        runs = {}
        for inject in (True, False):
            cfg = make_cfg(overrides)
            engine = Engine(cfg, torch.device("cpu"))
            g = engine.grid

            def step(b, engine=engine, g=g, cfg=cfg):
                return engine.train_step(split(b, g.dp_rank, g.dp_size, cfg.train.micro_batch_size), LR)

            step(batches[0])
            res = {}
            if inject:
                before = engine.state_dict()
                p = next(engine.chunks[0].parameters())
                hook = p.register_hook(lambda grad: torch.full_like(grad, math.inf)) if rank == 1 else None
                o = step(batches[1])
                if hook is not None:
                    hook.remove()
                res.update(skipped=o["skipped"], norm=o["grad_norm"], unchanged=_same(before, engine.state_dict()))
            o = step(batches[2])  # the uninjected run goes straight from batch 0 to batch 2
            res.update(last_skipped=o["skipped"], loss=o["loss"], state=engine.full_model_state())
            res["finite"] = state_is_finite(engine)
            with torch.no_grad():  # a parameter set to inf on one rank: every rank learns it
                q = next(engine.chunks[-1].parameters())
                keep = q.detach().clone()
                if rank == world - 1:
                    q.view(-1)[0] = math.inf
                res["finite_with_inf"] = state_is_finite(engine)
                q.copy_(keep)
            runs[inject] = res
        out.append(runs)
    return out


def test_an_inf_gradient_on_one_rank_skips_the_step_on_every_rank():
    configs = [
        ["parallel.pp=2", "parallel.distributed_optimizer=true"],  # dp2 x pp2, ZeRO-1
        ["parallel.tp=2", "parallel.sequence_parallel=true", "train.precision=bf16"],  # dp2 x tp2, bf16 masters
    ]
    results = run_ranks(_inf_gradient_on_one_rank, 4, (configs,))
    for c, overrides in enumerate(configs):
        for rank, per_rank in enumerate(results):
            injected, plain = per_rank[c][True], per_rank[c][False]
            assert injected["skipped"] and math.isinf(injected["norm"]), (overrides, rank)
            assert injected["unchanged"], (overrides, rank)  # params, masters, moments, step count
            assert not injected["last_skipped"] and injected["loss"] == plain["loss"], (overrides, rank)
            assert injected["finite"] and plain["finite"] and not injected["finite_with_inf"], (overrides, rank)
        a, b = results[0][c][True]["state"], results[0][c][False]["state"]
        assert _same(a, b), overrides  # a skipped step leaves no trace: bitwise the run without it


# ------------------------------------------------------------------ the trainer, one process


class _InfLoss:
    """A forward hook on the real model: the loss of the given steps' micro-batches becomes inf
    (2 micro-batches per step in these runs, counted in training mode only)."""

    def __init__(self, steps, set_param=False):
        self.steps, self.set_param, self.calls = set(steps), set_param, 0

    def __call__(self, module, args, output=None):
        if type(module).__name__ != "Transformer" or not module.training:
            return None
        self.calls += 1
        if (self.calls + 1) // 2 not in self.steps:
            return None
        if self.set_param:  # before the forward, a weight becomes inf (as a flipped bit would): bad state
            with torch.no_grad():
                next(module.parameters()).view(-1)[0] = math.inf
            return None
        return output * math.inf

    def __enter__(self):
        m = torch.nn.modules.module
        self.handle = (
            m.register_module_forward_pre_hook(self) if self.set_param else m.register_module_forward_hook(self)
        )
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_a_skipped_step_changes_nothing_and_is_counted(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "skip"
    cfg = run_config(data_dir, out, save_interval=1, eval_interval=0, max_steps=5)
    with _InfLoss({3}):
        assert train_cli(["--config", str(cfg)]) == 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["skipped"] for r in rows] == [False, False, True, False, False]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1, 1]
    assert not math.isfinite(rows[2]["loss"]) and all(math.isfinite(r["loss"]) for r in rows if not r["skipped"])
    assert sum(rows[2]["samples_per_source"].values()) == 3 * 4  # the skipped step's data is consumed
    # the schedule did not advance: step 4 gets the LR step 3 had; phase 2 starts on its own schedule
    phases = yaml_phases(cfg)
    sched = Schedule(phases, [p.steps for p in phases])
    assert rows[2]["lr"] == rows[3]["lr"] == pytest.approx(sched.lr(2)) and rows[4]["lr"] == pytest.approx(2e-3)
    ck = out / "checkpoints"
    from tests.checkpoint_cases import read_all

    s2, s3 = (read_all(ck / f"step_{i:08d}") for i in (2, 3))  # weights, masters and Adam moments
    assert set(s2) == set(s3) and all(torch.equal(s2[k], s3[k]) for k in s2)  # no state change
    m3, m4 = (json.loads((ck / f"step_{i:08d}" / "trainer.json").read_text()) for i in (3, 4))
    assert m3["optimizer_step"] == 2 and m4["optimizer_step"] == 3
    meta = json.loads((ck / "step_00000005" / "trainer.json").read_text())
    assert meta["skipped_steps"] == 1 and meta["skipped_per_phase"] == {"language": 1}


def yaml_phases(cfg_path):
    from megacrystal.config import load_config

    return load_config(str(cfg_path)).data.phases


def test_too_many_skipped_steps_in_a_row_stop_without_a_checkpoint(data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "streak"
    cfg = run_config(data_dir, out, eval_interval=0, max_skipped_steps=3)
    with _InfLoss(range(2, 9)):
        assert train_cli(["--config", str(cfg)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("megacrystal train: step 4: 3 steps in a row with a non-finite loss"), err[-1]
    assert "Traceback" not in "\n".join(err)
    rows = read_metrics(out)
    assert [(r["step"], r["skipped"], r["skipped_steps"]) for r in rows] == [
        (1, False, 0),
        (2, True, 1),
        (3, True, 2),
        (4, True, 3),
    ]
    assert not (out / "checkpoints").exists()


def test_a_parameter_turned_inf_is_never_saved(data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "infparam"
    cfg = run_config(data_dir, out, eval_interval=0, save_interval=2, max_steps=4)
    with _InfLoss({3}, set_param=True):
        assert train_cli(["--config", str(cfg)]) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "step 4: the parameters or optimizer state hold NaN/Inf; no checkpoint written" in err, err
    assert [r["skipped"] for r in read_metrics(out)] == [False, False, True, True]
    ck = out / "checkpoints"
    assert (ck / "latest").read_text() == "step_00000002"
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step_00000002"]
