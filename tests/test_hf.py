"""Hugging Face export/import (CrystalCoder, LLaMA layouts): configs, weights and logits against references."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from megacrystal import cli
from megacrystal.config import ModelConfig
from megacrystal.hf.convert import HFError, export_hf, import_hf
from megacrystal.hf.layouts import crystalcoder_config
from megacrystal.model.serialization import ModelFormatError, build_model, load_model, save_model
from tests.model_util import make_tokenizer, tiny_model

SHARED = Path("/work/shared/crystal_tokenizer")
ARCH_FIELDS = (
    "family",
    "num_layers",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "ffn_hidden_size",
    "vocab_size",
    "max_seq_len",
    "norm",
    "norm_eps",
    "rotary_fraction",
    "rotary_interleaved",
    "rotary_base",
    "bias",
    "tie_embeddings",
    "mup",
    "mup_embeddings_scale",
    "mup_output_alpha",
    "mup_scale_qk_dot_by_d",
)


def _saved(tmp_path, seed=0, with_tokenizer=True, **overrides):
    cfg, model = tiny_model(seed, **overrides)
    tok = make_tokenizer(tmp_path / "tok.json") if with_tokenizer else None
    ckpt = save_model(tmp_path / "ckpt", cfg, model.state_dict(), tokenizer_path=tok)
    return cfg, model, ckpt


def _arch(cfg):
    out = {k: getattr(cfg, k) for k in ARCH_FIELDS}
    out["width_mult"] = cfg.width_mult
    return out


# ----------------------------------------------------------------------------- CrystalCoder layout


@pytest.mark.skipif(not (SHARED / "config.json").is_file(), reason="released CrystalCoder config not present")
def test_crystal_7b_config_is_the_released_config():
    from megacrystal.hf.convert import tokenizer_ids

    ids = tokenizer_ids(str(SHARED / "tokenizer.json"))
    ours = crystalcoder_config(ModelConfig(preset="crystal-7b").resolve(), ids["bos"], ids["eos"])
    assert ours == json.loads((SHARED / "config.json").read_text())


def test_crystalcoder_export_layout(tmp_path):
    cfg, model, ckpt = _saved(tmp_path)
    out = export_hf(ckpt, "crystalcoder", tmp_path / "hf")
    w = load_file(str(out / "model.safetensors"))
    h, f, v, L = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size, cfg.num_layers
    want = {"transformer.wte.weight": (v, h), "transformer.ln_f.weight": (h,), "transformer.ln_f.bias": (h,)}
    for i in range(L):
        p = f"transformer.h.{i}."
        want.update(
            {
                p + "ln_1.weight": (h,),
                p + "ln_1.bias": (h,),
                p + "ln_2.weight": (h,),
                p + "ln_2.bias": (h,),
                p + "attn.c_attn.weight": (h, 3 * h),
                p + "attn.c_attn.bias": (3 * h,),
                p + "attn.c_proj.weight": (h, h),
                p + "attn.c_proj.bias": (h,),
                p + "mlp.c_fc.weight": (h, f),
                p + "mlp.c_fc.bias": (f,),
                p + "mlp.c_fc2.weight": (h, f),
                p + "mlp.c_fc2.bias": (f,),
                p + "mlp.c_proj.weight": (f, h),
                p + "mlp.c_proj.bias": (h,),
            }
        )
    assert {k: tuple(t.shape) for k, t in w.items()} == want
    conf = json.loads((out / "config.json").read_text())
    if (SHARED / "config.json").is_file():
        assert set(conf) == set(json.loads((SHARED / "config.json").read_text()))
    assert conf["model_type"] == "crystalcoder" and conf["architectures"] == ["CrystalCoderLMHeadModel"]
    assert conf["rotary_dim"] == int(cfg.head_dim * 0.25) and conf["n_inner"] == f and conf["vocab_size"] == v
    assert conf["mup_width_scale"] == cfg.width_mult and conf["mup_scale_qk_dot_by_d"] is True
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert conf["eos_token_id"] == 2 and conf["bos_token_id"] == 1
    # q | k | v blocks of c_attn are our grouped rows, head by head
    qkv = model.layers["0"].attn.qkv.weight.detach().view(cfg.num_heads, 3, cfg.head_dim, h)
    c_attn = w["transformer.h.0.attn.c_attn.weight"].t().reshape(3, cfg.num_heads, cfg.head_dim, h)
    assert torch.equal(c_attn[1], qkv[:, 1]) and torch.equal(c_attn[0], qkv[:, 0])


def _layer_norm(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def crystalcoder_reference_logits(hf_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    """An independent CrystalCoder forward from the HF files alone (docs/recipe.md, Model): GPT-2-style modules
    with Conv1D weights, LayerNorm, GPT-J rotary on `rotary_dim` dims (null/0: all), muP scales, tied head;
    scores unscaled when scale_attn_weights is false, and / (layer+1) with scale_attn_by_inverse_layer_idx."""
    conf = json.loads((hf_dir / "config.json").read_text())
    W = load_file(str(hf_dir / "model.safetensors"))
    H, n, eps = conf["n_embd"], conf["n_head"], conf["layer_norm_epsilon"]
    d = H // n
    rot = conf["rotary_dim"] or d  # null or 0: the whole head
    B, T = ids.shape

    def conv1d(x, name):
        return x @ W[name + ".weight"] + W[name + ".bias"]

    pos = torch.arange(T, dtype=torch.float64)
    theta = 1.0 / 10000 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    ang = (pos[:, None] * theta[None]).repeat_interleave(2, dim=-1)  # sin/cos repeated pairwise
    sin, cos = ang.sin().float()[None, :, None], ang.cos().float()[None, :, None]

    def rotate_every_two(x):
        return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)

    def rope(x):
        xr, xp = x[..., :rot], x[..., rot:]
        return torch.cat((xr * cos + rotate_every_two(xr) * sin, xp), dim=-1)

    x = W["transformer.wte.weight"][ids] * conf["mup_embeddings_scale"]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(conf["n_layer"]):
        p = f"transformer.h.{i}."
        a = _layer_norm(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
        q, k, v = conv1d(a, p + "attn.c_attn").split(H, dim=-1)
        q, k, v = (t.view(B, T, n, d) for t in (q, k, v))
        q, k = rope(q), rope(k)
        scale = 1.0 / d if conf["mup_scale_qk_dot_by_d"] else 1.0 / math.sqrt(d)
        scale = scale if conf.get("scale_attn_weights", True) else 1.0
        scale = scale / (i + 1) if conf.get("scale_attn_by_inverse_layer_idx", False) else scale
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
        att = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
        o = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(B, T, H)
        x = x + conv1d(o, p + "attn.c_proj")
        m = _layer_norm(x, W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
        x = x + conv1d(conv1d(m, p + "mlp.c_fc") * F.silu(conv1d(m, p + "mlp.c_fc2")), p + "mlp.c_proj")
    x = _layer_norm(x, W["transformer.ln_f.weight"], W["transformer.ln_f.bias"], eps)
    return (x @ W["transformer.wte.weight"].t()) * (conf["mup_output_alpha"] * conf["mup_width_scale"])


@pytest.mark.parametrize("overrides", [{}, {"hidden_size": 96, "num_heads": 3, "mup_base_width": 32}])
def test_crystalcoder_export_matches_independent_forward(tmp_path, overrides):
    cfg, model, ckpt = _saved(tmp_path, seed=4, with_tokenizer=False, **overrides)
    out = export_hf(ckpt, "crystalcoder", tmp_path / "hf")
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids)[..., : cfg.vocab_size]
        ref = crystalcoder_reference_logits(out, ids)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "fmt,overrides",
    [
        ("crystalcoder", {}),
        ("llama", {"family": "llama", "num_kv_heads": 2}),
        ("llama", {"family": "llama", "tie_embeddings": True, "bias": True}),
    ],
)
def test_export_import_round_trip_is_bit_exact(tmp_path, fmt, overrides):
    cfg, model, ckpt = _saved(tmp_path, seed=2, **overrides)
    hf = export_hf(ckpt, fmt, tmp_path / "hf", max_shard_bytes=100_000)  # several shards + index
    assert (hf / "model.safetensors.index.json").is_file()
    back = import_hf(hf, tmp_path / "back")
    cfg2, sd2 = load_model(back)
    assert _arch(cfg2) == _arch(cfg)
    sd = model.state_dict()
    assert set(sd2) == set(sd)
    for k, t in sd.items():
        assert t.dtype == sd2[k].dtype and torch.equal(t, sd2[k]), k
    assert (back / "tokenizer.json").read_bytes() == (ckpt / "tokenizer.json").read_bytes()


# ----------------------------------------------------------------------------- LLaMA parity


@pytest.mark.parametrize(
    "overrides",
    [
        {"family": "llama", "num_kv_heads": 2},
        {"family": "llama", "rotary_interleaved": True, "tie_embeddings": True, "bias": True},
    ],
)
def test_llama_export_logits_match_transformers(tmp_path, overrides):
    transformers = pytest.importorskip("transformers")
    cfg, model, ckpt = _saved(tmp_path, seed=3, with_tokenizer=False, **overrides)
    out = export_hf(ckpt, "llama", tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits
        ours = model(ids)[..., : cfg.vocab_size]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- errors


def test_bad_requests_give_one_line_errors(tmp_path, capsys):
    cfg, model, ckpt = _saved(tmp_path, with_tokenizer=False)
    with pytest.raises(HFError, match="--format llama: LlamaForCausalLM uses RMSNorm"):
        export_hf(ckpt, "llama", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert (
        cli.main(
            ["export-hf", "--checkpoint", str(tmp_path / "nope"), "--format", "llama", "--output", str(tmp_path / "y")]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err
    hf = export_hf(ckpt, "crystalcoder", tmp_path / "hf")
    conf = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(dict(conf, model_type="gpt_neox")))
    with pytest.raises(HFError, match="model_type 'gpt_neox'"):
        import_hf(hf, tmp_path / "z")
    (hf / "config.json").write_text(json.dumps(conf))
    w = load_file(str(hf / "model.safetensors"))
    del w["transformer.h.1.mlp.c_fc2.bias"]
    from safetensors.torch import save_file

    save_file(w, str(hf / "model.safetensors"))
    with pytest.raises(HFError, match="missing tensor 'transformer.h.1.mlp.c_fc2.bias'"):
        import_hf(hf, tmp_path / "z")
    assert not (tmp_path / "z").exists()


def test_model_dir_validation(tmp_path):
    cfg, model, ckpt = _saved(tmp_path, with_tokenizer=False)
    sd = model.state_dict()
    sd["layers.0.attn.qkv.weight"] = sd["layers.0.attn.qkv.weight"][:-1]
    with pytest.raises(ModelFormatError, match="layers.0.attn.qkv.weight.*expected"):
        save_model(tmp_path / "bad", cfg, sd)
    meta = json.loads((ckpt / "model_config.json").read_text())
    meta["model"]["num_heads"] = 5
    (ckpt / "model_config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="model_config.json.*num_heads"):
        load_model(ckpt)


def test_tp_padded_vocab_rows_are_accepted(tmp_path):
    """A consolidated tensor-parallel checkpoint pads the vocabulary further; the serial model trims it."""
    cfg, model, _ = _saved(tmp_path, with_tokenizer=False)
    sd = model.state_dict()
    sd["embed.weight"] = torch.cat([sd["embed.weight"], torch.zeros(128, cfg.hidden_size)])
    ckpt = save_model(tmp_path / "tp", cfg, sd)
    m2 = build_model(*load_model(ckpt))
    ids = torch.randint(0, cfg.vocab_size, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(m2(ids), model(ids), rtol=0, atol=0)


def test_export_finds_the_model_in_a_training_run(tmp_path):
    """`--checkpoint` may name the run directory: the `latest` marker leads to step_X/model/."""
    cfg, model = tiny_model(0)
    tok = make_tokenizer(tmp_path / "tok.json")
    run = tmp_path / "run"
    save_model(run / "checkpoints" / "step_00000007" / "model", cfg, model.state_dict(), tokenizer_path=tok)
    (run / "checkpoints" / "latest").write_text("step_00000007\n")
    out = export_hf(run, "crystalcoder", tmp_path / "hf")
    assert (out / "tokenizer.json").is_file()
    cfg2, sd2 = load_model(import_hf(out, tmp_path / "back"))
    assert all(torch.equal(v, sd2[k]) for k, v in model.state_dict().items())


def test_import_of_a_llama_written_by_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    conf = transformers.LlamaConfig(
        vocab_size=500,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(conf).eval()
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf_model.save_pretrained(str(tmp_path / "hf"))
    cfg, sd = load_model(import_hf(tmp_path / "hf", tmp_path / "ours"))
    assert (cfg.num_kv_heads, cfg.ffn_hidden_size, cfg.tie_embeddings, cfg.mup) == (2, 96, False, False)
    ours = build_model(cfg, sd)
    ids = torch.randint(0, 500, (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[..., :500], hf_model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
