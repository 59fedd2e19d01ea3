"""`train.init_from` (a DCP checkpoint with or without its optimizer state, a consolidated model
directory, an HF export) and the refusal to resume across precisions."""

from __future__ import annotations

import pytest
import torch

from megacrystal.checkpoint import Checkpointer, load_model_state
from megacrystal.checkpoint.format import CheckpointError
from megacrystal.engine.engine import Engine
from megacrystal.hf.convert import export_hf
from megacrystal.model.serialization import save_model
from megacrystal.train.init_from import init_from
from tests.checkpoint_cases import read_all
from tests.parallel_cases import LR, data, make_cfg, split


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "run"
    cfg = make_cfg([])
    e = Engine(cfg, torch.device("cpu"))
    for b in data(steps=2):
        e.train_step(split(b, 0, 1, 2), LR)
    Checkpointer(e, out, async_save=False).save(2, {})
    return out / "checkpoints" / "step_00000002", e.full_model_state()


def _fresh(overrides=()):
    return Engine(make_cfg(list(overrides)), torch.device("cpu"))


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_a_checkpoint_weights_only_or_with_the_optimizer(trained, tmp_path):
    ckpt, state = trained
    e = _fresh()
    init_from(e, ckpt, with_optimizer=False)
    assert _equal(e.full_model_state(), state) and e.optimizer.step_count == 0
    assert all(not m.any() for g in e.optimizer.groups for m in g["exp_avg"])
    e2 = _fresh()
    init_from(e2, ckpt.parent.parent, with_optimizer=True)  # a run directory: its newest intact checkpoint
    assert _equal(e2.full_model_state(), state) and e2.optimizer.step_count == 2
    Checkpointer(e2, tmp_path / "again", async_save=False).save(2, {})
    a, b = read_all(ckpt), read_all(tmp_path / "again" / "checkpoints" / "step_00000002")
    assert all(torch.equal(a[k], b[k]) for k in a)  # moments too


def test_init_from_a_consolidated_model_and_an_hf_export(trained, tmp_path):
    ckpt, state = trained
    cfg, sd = load_model_state(ckpt)
    save_model(tmp_path / "model", cfg, sd)
    e = _fresh()
    init_from(e, tmp_path / "model")
    assert _equal(e.full_model_state(), state)
    export_hf(ckpt, "crystalcoder", tmp_path / "hf")
    e2 = _fresh()
    init_from(e2, tmp_path / "hf")
    assert _equal(e2.full_model_state(), state)


def test_init_from_a_different_model_names_the_field(trained, tmp_path):
    ckpt, _ = trained
    with pytest.raises(CheckpointError, match="model.hidden_size is 32, this run has 64"):
        init_from(_fresh(["model.hidden_size=64", "model.mup_base_width=64"]), ckpt)


def test_resuming_across_precisions_is_refused_but_init_from_converts(trained):
    ckpt, state = trained
    e = _fresh(["train.precision=bf16"])
    with pytest.raises(CheckpointError, match=r"train.precision=fp32, this run has bf16.*train.init_from="):
        Checkpointer(e, ckpt.parent.parent, async_save=False).load(ckpt)
    init_from(e, ckpt)
    got = e.full_model_state()
    assert all(torch.equal(got[k], state[k].to(torch.bfloat16)) for k in state)


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.resume=latest", "train.resume"),
        ("train.keep_checkpoints=-1", "train.keep_checkpoints"),
        ("train.keep_every=-2", "train.keep_every"),
        ("train.init_from=/nonexistent/run", "train.init_from"),
    ],
)
def test_checkpoint_settings_are_validated_with_the_field_named(override, field):
    from megacrystal.config import ConfigError

    with pytest.raises(ConfigError, match=field):
        make_cfg([override])
