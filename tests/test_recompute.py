"""`model.recompute`: none, selective and full (uniform and block, with recompute_num_layers) train the
same model, bit for bit in fp64; selective drops the attention core's and the activation's outputs
and rebuilds them once in the backward; the old boolean field still reads; the config rules."""

import gc
import weakref

import pytest
import torch

from megacrystal.config import ConfigError, load_config
from megacrystal.model.recompute import activation_elements, recompute_groups, recompute_into
from tests.parallel_cases import FP64, train

MODES = [
    ["model.recompute=selective"],
    ["model.recompute=full"],
    ["model.recompute=full", "model.recompute_num_layers=3"],  # groups of 3 and 1
    ["model.recompute=full", "model.recompute_method=block", "model.recompute_num_layers=2"],
    ["model.recompute=true"],  # the old boolean: full
]


def test_every_mode_trains_the_same_model():
    from tests.parallel_cases import data

    batches = data(steps=2)
    ref = train(FP64, batches)
    for mode in MODES:
        got = train(FP64 + mode, batches)
        assert got["losses"] == ref["losses"] and got["norms"] == ref["norms"], mode
        assert all(torch.equal(got["state"][k], ref["state"][k]) for k in ref["state"]), mode


def test_recompute_groups_follow_megatron():
    assert recompute_groups(4, "none", None, None) == [(0, 4, False)]
    assert recompute_groups(4, "full", "uniform", None) == [(i, i + 1, True) for i in range(4)]
    assert recompute_groups(5, "full", "uniform", 2) == [(0, 2, True), (2, 4, True), (4, 5, True)]
    assert recompute_groups(4, "full", "block", 1) == [(0, 1, True), (1, 4, False)]
    assert recompute_groups(3, "full", "block", None) == [(i, i + 1, True) for i in range(3)]


def test_recompute_into_keeps_neither_the_output_nor_what_fn_saves():
    calls = []

    def fn(u, g):
        calls.append(1)
        return u * torch.sigmoid(g)

    lin = torch.nn.Linear(8, 4).double()
    u, g = (torch.randn(3, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    ref = lin(fn(u, g)).square().sum()
    ref_grads = torch.autograd.grad(ref, (u, g, lin.weight))
    calls.clear()

    seen = []

    def consumer(y):
        seen.append(weakref.ref(y))
        return lin(y)

    out = recompute_into(fn, (u, g), consumer).square().sum()
    gc.collect()
    assert seen[0]() is None  # the output is not kept for the linear's weight gradient
    assert len(calls) == 1
    grads = torch.autograd.grad(out, (u, g, lin.weight))
    assert len(calls) == 2  # one rebuild serves the linear's backward and fn's own
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True))


def test_config_rules_and_the_old_boolean():
    base = ["model.preset=tiny", "data.seq_length=64"]
    assert load_config(None, base + ["model.recompute=false"]).model.recompute == "none"
    full = load_config(None, base + ["model.recompute=true"]).model
    assert (full.recompute, full.recompute_method) == ("full", "uniform")
    for bad, field in [
        (["model.recompute=some"], "model.recompute:"),
        (["model.recompute=selective", "model.recompute_num_layers=2"], "model.recompute_method/"),
        (["model.recompute=full", "model.recompute_method=every"], "model.recompute_method:"),
        (["model.recompute=full", "model.recompute_num_layers=0"], "model.recompute_num_layers:"),
    ]:
        with pytest.raises(ConfigError, match=field):
            load_config(None, base + bad)


def test_selective_accounting_keeps_less_than_none():
    m = load_config(None, ["model.preset=crystal-7b"]).model
    none, sel, full = (activation_elements(m, k) for k in ("none", "selective", "full"))
    h, f = 4096, 10944  # the FFN padded to a multiple of 64
    assert none == 6 * h + 2 * h + 3 * f and sel == none - h - f and full == h
