"""muP initialisation statistics (docs/recipe.md, Model): truncated normal at ±2σ with σ by parameter kind."""

import math

import torch

from megacrystal.config import ModelConfig
from megacrystal.model.mup import init_parameters, init_std
from megacrystal.model.transformer import Transformer

TRUNC_STD = 0.8796  # std of a normal truncated at ±2σ, in units of σ


def test_crystal_init_statistics():
    cfg = ModelConfig(
        preset="tiny",
        hidden_size=256,
        num_heads=4,
        ffn_hidden_size=512,
        num_layers=3,
        vocab_size=3000,
        mup_base_width=64,
    ).resolve()
    m = 64 / 256
    hidden = 0.073 * math.sqrt(m)
    assert init_std(cfg, "embedding") == 0.073
    assert math.isclose(init_std(cfg, "hidden"), hidden)
    assert math.isclose(init_std(cfg, "output"), hidden / math.sqrt(2 * 3))
    model = Transformer(cfg)
    init_parameters(model, cfg, seed=0)
    p = dict(model.named_parameters())
    for name, sigma in (
        ("embed.weight", 0.073),
        ("layers.0.attn.qkv.weight", hidden),
        ("layers.1.mlp.up.weight", hidden),
        ("layers.2.attn.proj.weight", hidden / math.sqrt(6)),
        ("layers.0.mlp.down.weight", hidden / math.sqrt(6)),
    ):
        w = p[name].detach()[: cfg.vocab_size] if name.startswith("embed") else p[name].detach()
        assert w.abs().max() <= 2 * sigma + 1e-7, name
        assert abs(w.std().item() / (TRUNC_STD * sigma) - 1) < 0.03, name
        assert abs(w.mean().item()) < 0.05 * sigma, name
    assert torch.all(p["layers.0.norm1.weight"] == 1) and torch.all(p["layers.0.attn.qkv.bias"] == 0)


def test_crystal_7b_scales():
    cfg = ModelConfig(preset="crystal-7b").resolve()
    assert cfg.width_mult == 0.0625
    assert math.isclose(init_std(cfg, "hidden"), 0.01825)
    assert math.isclose(init_std(cfg, "output"), 0.00228125)
    assert math.isclose(cfg.mup_output_alpha * cfg.width_mult, 0.13875)
