"""Single-process tests of the parallel package: the grid layout, config/launch validation, the
pipeline partition, the vocab-parallel loss at tp=1, and the serial engine against plain torch."""

import functools
import operator

import pytest
import torch
import torch.distributed as dist

from megacrystal.config import ConfigError, load_config, validate_config
from megacrystal.engine.engine import Engine
from megacrystal.model.mup import init_parameters, param_groups
from megacrystal.model.transformer import Transformer
from megacrystal.ops.cross_entropy import cross_entropy_reference
from megacrystal.parallel import state
from megacrystal.parallel.cross_entropy import vocab_parallel_cross_entropy
from megacrystal.parallel.init import init_distributed
from megacrystal.parallel.pipeline import chunk_layers
from tests.parallel_cases import BASE, LR, data, make_cfg, split, state_problems


def test_grid_layout_megatron_default_order():
    g = state.group_ranks(8, tp=2, pp=2, order="tp-dp-pp")
    assert g["tp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert g["dp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert g["pp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert g["mp"] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert g["embedding"] == g["pp"]


def test_grid_layout_tp_pp_dp_order():
    g = state.group_ranks(8, tp=2, pp=2, order="tp-pp-dp")
    assert sorted(g["tp"]) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert g["pp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert g["dp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert sorted(functools.reduce(operator.iadd, g["mp"], [])) == list(range(8))


def test_grid_layout_pp4_embedding_group_is_first_and_last_stage():
    g = state.group_ranks(8, tp=1, pp=4, order="tp-dp-pp")
    assert g["pp"] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert g["embedding"] == [[0, 6], [1, 7]]


def test_single_process_grid_needs_no_process_group():
    cfg = make_cfg([])
    grid = state.build_grid(cfg)
    assert (grid.world_size, grid.tp_size, grid.pp_size, grid.dp_size) == (1, 1, 1, 1)
    assert grid.tp.pg is None and grid.is_first_stage and grid.is_last_stage
    with pytest.raises(ConfigError, match="world size 2 needs torch.distributed"):
        state.build_grid(make_cfg(["parallel.tp=2"]), world_size=2, rank=0)


@pytest.mark.parametrize(
    "overrides, world, message",
    [
        (["parallel.tp=2"], 3, "world size 3 is not divisible by tp\\*pp=2"),
        (["parallel.tp=8"], 8, "num_heads=4 is not divisible by tp=8"),
        (["parallel.tp=2", "model.num_kv_heads=1"], 2, "num_kv_heads=1 is not divisible by tp=2"),
        (["parallel.pp=3"], 3, "num_layers=4 is not divisible by pp\\*vpp=3"),
        (["parallel.pp=2", "parallel.vpp=4"], 2, "num_layers=4 is not divisible by pp\\*vpp=8"),
        (["train.global_batch_size=6"], 4, "global_batch_size: 6 is not divisible by micro_batch_size\\*dp = 2\\*4"),
        (["parallel.sequence_parallel=true"], 1, "sequence_parallel: needs parallel.tp > 1"),
        (["parallel.vpp=2"], 2, "vpp: needs parallel.pp > 1"),
        (
            ["model.num_layers=8", "parallel.pp=4", "parallel.vpp=2", "train.global_batch_size=12"],
            4,
            "interleaved 1F1B needs the number of micro-batches \\(6\\) divisible by pp=4",
        ),
        (
            ["parallel.tp=4", "parallel.sequence_parallel=true", "data.seq_length=18"],
            4,
            "seq_length=18 is not divisible by tp=4",
        ),
        (["parallel.dp=4"], 2, "parallel.dp: 4 but world size 2"),
        (["parallel.order=pp-tp-dp"], 1, "parallel.order"),
        (["parallel.bucket_size_mb=0"], 1, "bucket_size_mb"),
    ],
)
def test_config_rules_fail_with_the_field_named(overrides, world, message):
    cfg = load_config(None, BASE + overrides, validate=False)
    with pytest.raises(ConfigError, match=message) as err:
        validate_config(cfg, world)
    assert "\n" not in str(err.value)
    ok = load_config(None, BASE + ["model.num_layers=8", "parallel.pp=4", "parallel.vpp=2"], validate=False)
    validate_config(ok, 4)  # 8 sequences / (mbs 2 * dp 1) = 4 micro-batches: fine for interleaving


def test_init_distributed_rejects_a_bad_launch_before_any_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="world size 3 is not divisible by tp\\*pp=2"):
        init_distributed(make_cfg(["parallel.tp=2"]))
    assert not dist.is_initialized()
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="RANK=5"):
        init_distributed(make_cfg([]))
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        init_distributed(make_cfg([]))
    if not torch.cuda.is_available():
        monkeypatch.setenv("WORLD_SIZE", "1")
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(ConfigError, match="train.device: cuda requested"):
            init_distributed(make_cfg(["train.device=cuda"]))
        with pytest.raises(ConfigError, match="parallel.backend: nccl needs CUDA"):
            init_distributed(make_cfg(["parallel.backend=nccl"]))
    assert not dist.is_initialized()


def test_interleaved_partition_is_megatrons():
    assert chunk_layers(8, 2, 2, 0, 0) == ([0, 1], True, False)
    assert chunk_layers(8, 2, 2, 1, 0) == ([2, 3], False, False)
    assert chunk_layers(8, 2, 2, 0, 1) == ([4, 5], False, False)
    assert chunk_layers(8, 2, 2, 1, 1) == ([6, 7], False, True)
    assert chunk_layers(8, 4, 1, 3, 0) == ([6, 7], False, True)


@pytest.mark.parametrize("chunk", [1 << 24, 37])
def test_vocab_parallel_cross_entropy_at_tp1_is_the_reference(chunk):
    g = state.Group("tp", [0], 0, None)
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 64)
    logits[..., 50:] = float("-inf")  # padded vocabulary
    labels = torch.randint(0, 50, (3, 7))
    labels[0, 0] = -100
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    la = vocab_parallel_cross_entropy(a, labels, g, chunk)
    lb = cross_entropy_reference(b, labels)
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
    w = torch.rand(3, 7)
    (la * w).sum().backward()
    (lb * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)
    assert la[0, 0] == 0 and torch.all(a.grad[0, 0] == 0)


def test_serial_engine_equals_plain_torch_adamw():
    """The 1-rank engine (the reference of every equivalence test) is ordinary training (in fp64, so
    the different summation orders of the two do not show)."""
    cfg = make_cfg(["train.precision=fp64"])
    engine = Engine(cfg, torch.device("cpu"))
    model = Transformer(cfg.model)
    init_parameters(model, cfg.model, cfg.train.seed)
    model.double()
    o = cfg.optim
    opt = torch.optim.AdamW(
        [
            dict(params=g["params"], lr=LR * g["lr_mult"], weight_decay=g["weight_decay"])
            for g in param_groups(model, cfg.model, o.weight_decay)
        ],
        betas=(o.beta1, o.beta2),
        eps=o.eps,
    )
    for batch in data(steps=3):
        mbs = split(batch, 0, 1, cfg.train.micro_batch_size)
        out = engine.train_step(mbs, LR)
        opt.zero_grad()
        total = batch["loss_mask"].sum()
        loss = 0.0
        for mb in mbs:
            per_token = model(mb["tokens"], labels=mb["labels"])
            part = (per_token * mb["loss_mask"]).sum() / total
            part.backward()
            loss += part.item()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        opt.step()
        assert out["loss"] == pytest.approx(loss, rel=1e-9)
        assert out["grad_norm"] == pytest.approx(norm.item(), rel=1e-9)
    problems = state_problems("engine vs torch", model.state_dict(), engine.full_model_state(), cfg.model, 1e-9)
    assert not problems, "\n".join(problems)


def test_bf16_keeps_fp32_masters_and_grads_and_tracks_fp32():
    batches = data(steps=4)
    runs = {}
    for prec in ("fp32", "bf16"):
        cfg = make_cfg([f"train.precision={prec}"])
        e = Engine(cfg, torch.device("cpu"))
        runs[prec] = [e.train_step(split(b, 0, 1, 2), 1e-2)["loss"] for b in batches]
        if prec == "bf16":
            p = e.chunks[0].layers["0"].attn.qkv.weight
            assert p.dtype == torch.bfloat16 and p.main_grad.dtype == torch.float32 and p.grad is None
            masters = [m for g in e.optimizer.groups for m in g["masters"]]
            assert all(m.dtype == torch.float32 for m in masters)
    for a, b in zip(runs["fp32"], runs["bf16"], strict=True):
        assert b == pytest.approx(a, rel=2e-2)


def test_engine_state_from_another_layout_is_refused():
    sd = Engine(make_cfg([]), torch.device("cpu")).state_dict()
    other = Engine(make_cfg(["parallel.distributed_optimizer=true"]), torch.device("cpu"))
    with pytest.raises(ValueError, match="saved by rank layout"):
        other.load_state_dict(sd)
    with pytest.raises(ValueError, match="expected format"):
        other.load_state_dict({"model": {}})


def test_bad_micro_batches_are_named():
    e = Engine(make_cfg([]), torch.device("cpu"))
    good = split(data(steps=1)[0], 0, 1, 2)
    with pytest.raises(ValueError, match=r"micro_batches\[0\]: missing 'loss_mask'"):
        e.train_step([{k: v for k, v in good[0].items() if k != "loss_mask"}], LR)
    bad = dict(good[1], tokens=good[1]["tokens"] + 1000)
    with pytest.raises(ValueError, match=r"micro_batches\[1\].tokens: ids in \[\d+, \d+\], expected \[0, 300\)"):
        e.train_step([good[0], bad], LR)
    with pytest.raises(ValueError, match="shape"):
        e.train_step([good[0], {k: v[:, :8] for k, v in good[1].items()}], LR)
