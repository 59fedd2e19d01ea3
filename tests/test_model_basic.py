"""The serial model: forward/backward, parameter counts, stages composing to the whole, padding, muP groups."""

import pytest
import torch

from megacrystal.config import ModelConfig
from megacrystal.model.mup import init_parameters, param_groups
from megacrystal.model.padding import true_numel
from megacrystal.model.transformer import Transformer, count_parameters


@pytest.mark.parametrize("family", ["crystal", "llama"])
def test_forward_backward_and_param_count(family):
    cfg = ModelConfig(family=family, preset="tiny").resolve()
    m = Transformer(cfg)
    init_parameters(m, cfg, seed=3)
    assert sum(true_numel(p) for p in m.parameters()) == count_parameters(cfg)  # padding not counted
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    loss = m(x, labels=x.roll(-1, 1))
    assert loss.shape == (2, 16) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_crystal_7b_size_matches_paper():
    assert abs(count_parameters(ModelConfig(preset="crystal-7b")) / 1e9 - 6.58) < 0.01


def test_stages_compose_to_the_serial_model():
    cfg = ModelConfig(preset="tiny").resolve()
    full = Transformer(cfg)
    init_parameters(full, cfg, seed=5)
    a = Transformer(cfg, layer_ids=[0, 1], post_process=False)
    b = Transformer(cfg, layer_ids=[2, 3], pre_process=False)
    init_parameters(a, cfg, seed=5)
    init_parameters(b, cfg, seed=5)
    # the tied head copy on the last stage starts equal to the embedding
    assert torch.equal(b.head.weight, full.embed.weight)
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    torch.testing.assert_close(b(hidden=a(x), labels=x), full(x, labels=x), rtol=0, atol=0)


def test_padded_vocab_is_never_predicted():
    cfg = ModelConfig(preset="tiny", vocab_size=1000).resolve()
    m = Transformer(cfg)
    init_parameters(m, cfg, seed=0)
    logits = m(torch.randint(0, 1000, (1, 8)))
    assert logits.shape[-1] == 1024 and torch.isinf(logits[..., 1000:]).all()
    assert torch.count_nonzero(m.embed.weight[1000:]) == 0


def test_mup_groups_scale_hidden_matrices():
    cfg = ModelConfig(preset="tiny", hidden_size=128, num_heads=4, mup_base_width=32).resolve()
    m = Transformer(cfg)
    groups = {g["name"]: g for g in param_groups(m, cfg, 0.1)}
    assert groups["matrix"]["lr_mult"] == pytest.approx(0.25)
    assert groups["embedding"]["lr_mult"] == 1.0 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in groups["no_decay"]["params"])


def test_segment_ids_mask_attention_only_with_document_mask():
    x = torch.randint(0, 2048, (2, 12))
    seg = (torch.arange(12) >= 5).long().expand(2, 12)
    outs = {}
    for mask in (False, True):
        cfg = ModelConfig(preset="tiny", document_mask=mask).resolve()
        m = Transformer(cfg)
        init_parameters(m, cfg, seed=1)
        outs[mask] = (m(x, segment_ids=seg), m(x))
    torch.testing.assert_close(outs[False][0], outs[False][1], rtol=0, atol=0)  # ignored
    assert not torch.allclose(outs[True][0][:, 5:], outs[True][1][:, 5:])  # masked
    torch.testing.assert_close(outs[True][0][:, :5], outs[True][1][:, :5])  # first document unchanged
