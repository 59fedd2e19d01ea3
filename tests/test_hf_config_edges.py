"""CrystalCoder config keys whose meaning import/export used to get wrong: rotary_dim null/0 (= whole head),
a model without rotary (not expressible), and the attention-scale keys (scale_attn_weights,
scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn). The oracle is the independent reference forward
of tests/test_hf.py, and the shipped modeling code must agree with it."""

import json

import pytest
import torch

from megacrystal.hf.convert import HFError, export_hf, import_hf
from megacrystal.model.serialization import build_model, load_model, save_model
from tests.model_util import tiny_model
from tests.test_hf import crystalcoder_reference_logits

IDS = torch.randint(0, 1000, (2, 13), generator=torch.Generator().manual_seed(7))


def _export(tmp_path, **overrides):
    cfg, model = tiny_model(5, **overrides)
    ckpt = save_model(tmp_path / "ckpt", cfg, model.state_dict())
    return cfg, model, export_hf(ckpt, "crystalcoder", tmp_path / "hf")


def _edit(hf_dir, **changes) -> dict:
    conf = json.loads((hf_dir / "config.json").read_text())
    conf.update(changes)
    (hf_dir / "config.json").write_text(json.dumps(conf))
    return conf


def _logits(model, cfg):
    with torch.no_grad():
        return model(IDS)[..., : cfg.vocab_size]


def _remote_logits(hf_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), trust_remote_code=True).eval()
    with torch.no_grad():
        return hf(input_ids=IDS).logits.float()


@pytest.mark.parametrize("value", [None, 0])
def test_rotary_dim_null_or_zero_is_the_whole_head(tmp_path, value):
    cfg, model, hf = _export(tmp_path, rotary_fraction=1.0)
    assert json.loads((hf / "config.json").read_text())["rotary_dim"] == cfg.head_dim
    _edit(hf, rotary_dim=value)
    cfg2, sd2 = load_model(import_hf(hf, tmp_path / "back"))
    assert cfg2.rotary_fraction == 1.0
    ours = _logits(build_model(cfg2, sd2), cfg2)
    torch.testing.assert_close(ours, _logits(model, cfg), rtol=0, atol=0)
    ref = crystalcoder_reference_logits(hf, IDS)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_remote_logits(hf), ref, rtol=1e-5, atol=1e-5)


def test_a_model_without_rotary_is_refused_at_export(tmp_path):
    cfg, model = tiny_model(0, rotary_fraction=0.0)
    ckpt = save_model(tmp_path / "ckpt", cfg, model.state_dict())
    with pytest.raises(HFError, match="without rotary.*rotary_dim 0 or null as the whole head"):
        export_hf(ckpt, "crystalcoder", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("scale_attn_weights", False, "always scales scores"),
        ("scale_attn_by_inverse_layer_idx", True, "no per-layer 1/\\(layer\\+1\\)"),
    ],
)
def test_score_scale_keys_the_model_cannot_compute_are_refused_on_import(tmp_path, key, value, words):
    cfg, model, hf = _export(tmp_path)
    _edit(hf, **{key: value})
    with pytest.raises(HFError, match=f"{key}={value}; .*{words}"):
        import_hf(hf, tmp_path / "back")
    assert not (tmp_path / "back").exists()
    # the shipped modeling code implements them: it matches the reference with the key set ...
    ref = crystalcoder_reference_logits(hf, IDS)
    torch.testing.assert_close(_remote_logits(hf), ref, rtol=1e-5, atol=1e-5)
    # ... which is a different function from the model we exported
    assert (ref - _logits(model, cfg)).abs().max() > 1e-3


def test_reorder_and_upcast_attn_is_the_same_function(tmp_path):
    cfg, model, hf = _export(tmp_path)
    _edit(hf, reorder_and_upcast_attn=True)
    cfg2, sd2 = load_model(import_hf(hf, tmp_path / "back"))
    torch.testing.assert_close(_logits(build_model(cfg2, sd2), cfg2), _logits(model, cfg), rtol=0, atol=0)
    torch.testing.assert_close(_remote_logits(hf), _logits(model, cfg), rtol=1e-5, atol=1e-5)
