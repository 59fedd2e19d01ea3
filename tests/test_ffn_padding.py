"""Zero padding of the FFN inner size (and the vocabulary), through one mechanism (model/padding.py):
padded sizes, exactness against an unpadded model, padding that stays zero through training (serial
and tensor-parallel), and moving weights between layouts (consolidated state, model files)."""

import pytest
import torch

from megacrystal.checkpoint import load_model_state
from megacrystal.config import ModelConfig
from megacrystal.engine.engine import Engine
from megacrystal.model.layers import PaddedSizes, SerialLayers
from megacrystal.model.mup import init_parameters
from megacrystal.model.padding import fit_problem, full_shape, refit, refit_state, true_part, true_shape
from megacrystal.model.param_spec import param_spec
from megacrystal.model.serialization import ModelFormatError, build_model, load_model, save_model
from megacrystal.model.transformer import Transformer, count_parameters, serial_layout
from tests.dist import run_ranks
from tests.parallel_cases import LR, data, make_cfg, split


def test_refit_moves_the_true_block_and_rejects_what_does_not_fit():
    t = torch.arange(6.0).view(2, 3)
    wide = refit(t, (2, 3), (4, 5))
    assert wide.shape == (4, 5) and torch.equal(wide[:2, :3], t) and wide.abs().sum() == t.abs().sum()
    assert torch.equal(refit(wide, (2, 3), (2, 3)), t)
    assert torch.equal(refit(wide, (2, 3), (3, 3)), torch.cat([t, torch.zeros(1, 3)]))
    assert "has shape (2, 3), expected (2, 4)" in fit_problem(t, (2, 4))
    dirty = wide.clone()
    dirty[3, 0] = 1.0
    assert "non-zero values beyond its true shape (2, 3)" in fit_problem(dirty, (2, 3))
    with pytest.raises(ValueError, match="non-zero"):
        refit(dirty, (2, 3), (4, 5))
    with pytest.raises(ValueError, match="does not hold the true shape"):
        refit(t, (2, 3), (1, 3))
    with pytest.raises(ValueError, match="tensor 'w' has shape"):
        refit_state({"w": t}, {"w": ((4, 8), (4, 8))})


def test_padded_sizes_are_multiples_of_64_per_shard_and_counts_stay_true():
    tp4 = PaddedSizes()
    tp4.tp_size = 4
    assert SerialLayers().padded_ffn(10922) == 10944 and SerialLayers().padded_ffn(5461) == 5504
    assert tp4.padded_ffn(10922) == 11008 and tp4.padded_ffn(10922) // 4 % 64 == 0
    assert SerialLayers().padded_ffn(128) == 128 and tp4.padded_vocab(32032) == 32256
    cfg = ModelConfig(preset="crystal-7b").resolve()
    layout = serial_layout(cfg)
    assert layout["layers.0.mlp.up.weight"] == ((10944, 4096), (10922, 4096))
    assert layout["layers.0.mlp.down.weight"] == ((4096, 10944), (4096, 10922))
    assert layout["layers.0.mlp.gate.bias"] == ((10944,), (10922,))
    true = sum(torch.Size(t).numel() for _, t in layout.values())
    assert true == count_parameters(cfg) < sum(torch.Size(s).numel() for s, _ in layout.values())


class _Unpadded(SerialLayers):
    ffn_multiple = 1


@pytest.mark.parametrize("family", ["crystal", "llama"])
def test_odd_ffn_gives_the_loss_and_gradients_of_the_unpadded_model(family):
    cfg = ModelConfig(preset="tiny", family=family, num_layers=2).resolve()  # ffn 172 -> 192
    padded = Transformer(cfg)
    init_parameters(padded, cfg, seed=4)
    assert padded.layers["0"].mlp.up.weight.shape == (192, 64)
    plain = Transformer(cfg, layers=_Unpadded())
    assert plain.layers["0"].mlp.up.weight.shape == (172, 64)
    plain.load_state_dict(refit_state(padded.state_dict(), serial_layout(cfg), to_true=True))
    x = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    lp, lu = padded(x, labels=x.roll(-1, 1)), plain(x, labels=x.roll(-1, 1))
    torch.testing.assert_close(lp, lu, rtol=1e-6, atol=1e-6)
    lp.mean().backward()
    lu.mean().backward()
    grads = dict(plain.named_parameters())
    for n, p in padded.named_parameters():
        true = true_shape(p)
        torch.testing.assert_close(true_part(p.grad, true), grads[n].grad, rtol=1e-5, atol=1e-7, msg=n)
        assert fit_problem(p.grad, true) is None, f"{n}: gradient on padding"


def _padding_mask(p: torch.Tensor) -> torch.Tensor:
    """True where this rank's piece of `p` is padding."""
    mask = torch.ones(full_shape(p), dtype=torch.bool)
    mask[tuple(slice(0, n) for n in true_shape(p))] = False
    return param_spec(p).shard(mask)


def _train_and_check_padding(overrides: list[str], steps: int = 3):
    cfg = make_cfg(overrides + ["optim.weight_decay=0.1"])
    e = Engine(cfg, torch.device("cpu"))
    g = e.grid
    for b in data(steps=steps):
        e.train_step(split(b, g.dp_rank, g.dp_size, cfg.train.micro_batch_size), 20 * LR)
    padded = 0
    for m in e.chunks:
        for n, p in m.named_parameters():
            mask = _padding_mask(p)
            assert not p.detach()[mask].any(), f"{n}: padding is no longer zero"
            padded += int(mask.sum())
    return e, padded


def test_padding_stays_zero_through_training_serial():
    e, padded = _train_and_check_padding(["model.ffn_hidden_size=66"])  # 66 -> 128, vocab 300 -> 320
    h, L = 32, 4
    assert padded == L * (3 * 62 * h + 2 * 62) + 20 * h
    assert e.num_parameters() == count_parameters(e.cfg.model)


def _tp_rank(rank, world, out_dir):
    from megacrystal.checkpoint import Checkpointer

    e, padded = _train_and_check_padding(["parallel.tp=2", "model.ffn_hidden_size=130"])  # tp2: 130 -> 256
    local = dict(e.chunks[0].named_parameters())["layers.0.mlp.up.weight"].shape
    batch = split(data(steps=1, seed=9)[0], 0, 1, 2)
    loss = e.eval_loss(batch)
    Checkpointer(e, out_dir, async_save=False).save(3, {})
    return dict(padded=padded, local=tuple(local), loss=loss, state=e.full_model_state())


def test_tp2_padding_stays_zero_and_its_checkpoint_loads_serially(tmp_path):
    res = run_ranks(_tp_rank, 2, (str(tmp_path),))
    assert [r["local"] for r in res] == [(128, 32), (128, 32)]
    # rank 0 holds FFN rows/columns 0..127 and vocabulary rows 0..191 (of 384): all real
    assert [r["padded"] for r in res] == [0, 4 * (3 * 126 * 32 + 2 * 126) + 84 * 32]
    state = res[0]["state"]
    assert state["layers.0.mlp.up.weight"].shape == (192, 32)  # consolidated: serial padding
    assert state["layers.0.mlp.down.weight"].shape == (32, 192)
    cfg, sd = load_model_state(tmp_path / "checkpoints")  # the sharded checkpoint, read offline
    assert all(torch.equal(sd[k], v) for k, v in state.items())
    model = build_model(cfg, sd)
    loss_sum, tokens = 0.0, 0.0
    with torch.no_grad():
        for b in split(data(steps=1, seed=9)[0], 0, 1, 2):
            per_token = model(b["tokens"], labels=b["labels"])
            loss_sum += float((per_token * b["loss_mask"]).sum())
            tokens += float(b["loss_mask"].sum())
    assert tokens == res[0]["loss"][1]
    assert loss_sum == pytest.approx(res[0]["loss"][0], rel=1e-5)


def test_model_files_accept_any_zero_padding_and_reject_values_in_it(tmp_path):
    cfg = ModelConfig(preset="tiny", num_layers=1, vocab_size=1000).resolve()
    m = Transformer(cfg)
    init_parameters(m, cfg, seed=2)
    sd = m.state_dict()
    more = dict(sd)
    more["layers.0.mlp.up.weight"] = torch.cat([sd["layers.0.mlp.up.weight"], torch.zeros(64, 64)])
    more["layers.0.mlp.down.weight"] = torch.cat([sd["layers.0.mlp.down.weight"], torch.zeros(64, 64)], 1)
    rebuilt = build_model(*load_model(save_model(tmp_path / "more", cfg, more)))
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in sd.items())
    bad = dict(sd)
    bad["layers.0.mlp.down.weight"] = sd["layers.0.mlp.down.weight"].clone()
    bad["layers.0.mlp.down.weight"][:, 180] = 1.0
    with pytest.raises(
        ModelFormatError, match="layers.0.mlp.down.weight.*non-zero values beyond its true shape \\(64, 172\\)"
    ):
        save_model(tmp_path / "bad", cfg, bad)
    assert not (tmp_path / "bad" / "model.safetensors").exists()
