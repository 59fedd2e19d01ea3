"""The modeling code crystalcoder exports carry (megacrystal/hf/remote/), loaded the way users load it:
AutoModelForCausalLM + trust_remote_code on the installed transformers. Checks live in tests/hf_parity.py
(also a script for other transformers versions)."""

import json
from pathlib import Path

import pytest
import torch

from megacrystal import cli
from megacrystal.config import ModelConfig
from megacrystal.hf.layouts import to_crystalcoder
from megacrystal.model.transformer import Transformer
from tests import hf_parity as hp

pytest.importorskip("transformers")
RELEASED = Path("/work/shared/crystal_tokenizer/config.json")


@pytest.mark.parametrize("variant", sorted(hp.VARIANTS))
def test_export_loads_and_matches_our_forward(tmp_path, variant):
    cfg, model, _, hf_dir = hp.export_variant(tmp_path, hp.VARIANTS[variant])
    assert {"configuration_crystalcoder.py", "modeling_crystalcoder.py"} <= {p.name for p in hf_dir.iterdir()}
    hf, info = hp.load_hf(hf_dir)
    assert type(hf).__name__ == "CrystalCoderLMHeadModel"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tied = hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    assert tied == cfg.tie_embeddings
    ids = torch.randint(0, cfg.vocab_size, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model(ids)[..., : cfg.vocab_size], rtol=1e-5, atol=1e-5)
    ours, theirs = hp.greedy_pair(cfg, model, hf)
    assert ours == theirs and len(ours) > 0


def test_loaded_weights_are_the_files_weights(tmp_path):
    """Nothing is re-drawn after loading (the released code re-initialised every attn.c_proj.weight)."""
    from safetensors.torch import load_file

    _, _, _, hf_dir = hp.export_variant(tmp_path, {"tie_embeddings": False})
    hf, _ = hp.load_hf(hf_dir)
    sd = hf.state_dict()
    for name, t in load_file(str(hf_dir / "model.safetensors")).items():
        assert torch.equal(sd[name], t), name


def test_kv_cache_left_padding_beam_and_sampling(tmp_path):
    cfg, model, _, hf_dir = hp.export_variant(tmp_path, {"mup": False})
    hf, _ = hp.load_hf(hf_dir)
    assert hp.cache_gap(cfg, hf) <= 1e-5
    gap, same = hp.left_pad_gaps(cfg, hf)
    assert gap <= 1e-5 and same
    assert hp.beam_gap(cfg, model, hf) <= 1e-4
    assert hp.sampling_ok(cfg, hf)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loads_and_runs(tmp_path, dtype):
    cfg, model, _, hf_dir = hp.export_variant(tmp_path, {})
    hf, _ = hp.load_hf(hf_dir, dtype)
    assert hf.lm_head.weight.dtype == dtype
    # bf16 keeps 8 mantissa bits (2^-8 = 0.4%); a 2-layer model's logits stay within a few of those steps
    bound = 0.05 if dtype == torch.bfloat16 else 0.01
    assert hp.half_gap(cfg, model, hf_dir, dtype) <= bound
    out = hf.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False, pad_token_id=hp.EOS)
    assert out.shape[1] <= 7


def test_generate_command_and_generate_agree_on_text(tmp_path, capsys):
    """`megacrystal generate --greedy` prints the same text as generate() on the export decodes to."""
    from tokenizers import Tokenizer

    cfg, model, ckpt, hf_dir = hp.export_variant(tmp_path, {"mup": False}, seed=3, vocab_size=300)
    prompt = "def add(a, b):"
    assert (
        cli.main(["generate", "--checkpoint", str(ckpt), "--prompt", prompt, "--greedy", "--max-new-tokens", "10"]) == 0
    )
    printed = capsys.readouterr().out.rstrip("\n")
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    hf, _ = hp.load_hf(hf_dir)
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False).ids])
    out = hf.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=hp.EOS)[0].tolist()
    out = out[: out.index(hp.EOS, ids.shape[1])] if hp.EOS in out[ids.shape[1] :] else out
    assert printed == tok.decode(out, skip_special_tokens=False)


@pytest.mark.skipif(not RELEASED.is_file(), reason="the released CrystalCoder config.json is not present")
def test_released_7b_config_builds_on_meta_with_the_released_names():
    """The released 7B config.json loads into our modeling code on the meta device; its parameters are exactly
    the names and shapes of a crystal-7b export (the released checkpoint's layout), head tied."""
    from megacrystal.hf.remote.configuration_crystalcoder import CrystalCoderConfig
    from megacrystal.hf.remote.modeling_crystalcoder import CrystalCoderLMHeadModel

    released = json.loads(RELEASED.read_text())
    conf = CrystalCoderConfig(**{k: v for k, v in released.items() if k not in ("auto_map", "model_type")})
    with torch.device("meta"):
        hf = CrystalCoderLMHeadModel(conf)
        cfg = ModelConfig(preset="crystal-7b").resolve()
        ours = to_crystalcoder(cfg, Transformer(cfg).state_dict())
    theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    assert theirs == {k: tuple(v.shape) for k, v in ours.items()}
    assert hf.lm_head.weight is hf.transformer.wte.weight
    missing, unexpected = hf.load_state_dict(ours, strict=False, assign=True)
    assert list(unexpected) == [] and list(missing) in ([], ["lm_head.weight"])


def test_unimplemented_config_values_are_refused():
    from megacrystal.hf.remote.configuration_crystalcoder import CrystalCoderConfig
    from megacrystal.hf.remote.modeling_crystalcoder import CrystalCoderLMHeadModel

    small = dict(n_embd=32, n_head=4, n_layer=1, vocab_size=64, n_positions=16)
    for key, value, words in (
        ("position_embedding_type", "alibi", "ALiBi"),
        ("rotary_dim", 5, "even number"),
        ("rotary_dim", 16, "head dim 8"),
        ("add_cross_attention", True, "cross-attention"),
    ):
        with pytest.raises(ValueError, match=f"config: {key}=.*{words}"):
            CrystalCoderLMHeadModel(CrystalCoderConfig(**small, **{key: value}))


def test_exported_tokenizer_pads_left_for_batched_generation(tmp_path):
    """The docs' recipe: AutoTokenizer on the export pads on the left, and each row of a batched generate()
    is what that prompt generates alone."""
    from transformers import AutoTokenizer

    _, _, _, hf_dir = hp.export_variant(tmp_path, {"mup": False}, seed=2, vocab_size=300)
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    hf, _ = hp.load_hf(hf_dir)
    texts = ["def add(a, b):", "The quick brown fox jumps over the lazy dog."]
    batch = tok(texts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1].all()
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    together = hf.generate(**batch, **kw)
    for i, text in enumerate(texts):
        alone = hf.generate(**tok([text], return_tensors="pt"), **kw)[0]
        assert torch.equal(together[i, -alone.shape[0] :], alone)


@pytest.mark.parametrize("dummy_prefix", [False, True])
def test_exported_sentencepiece_tokenizer_encodes_as_ours(tmp_path, dummy_prefix):
    """A SentencePiece model exports as LlamaTokenizer with legacy=false and add_prefix_space set from the
    model, so transformers (and lm-eval) tokenize exactly as training did, with or without a dummy prefix."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from megacrystal.hf.convert import export_hf
    from megacrystal.model.serialization import save_model
    from megacrystal.tokenizer import load_tokenizer
    from tests.model_util import TEXT, tiny_model

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=360,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=dummy_prefix,
        normalization_rule_name="identity",  # as `megacrystal train-tokenizer` trains them
        remove_extra_whitespaces=False,
        bos_id=1,
        eos_id=2,
        unk_id=0,
    )
    cfg, model = tiny_model(0, vocab_size=400)
    ckpt = save_model(tmp_path / "ckpt", cfg, model.state_dict(), tokenizer_path=str(tmp_path / "sp.model"))
    hf_dir = export_hf(ckpt, "crystalcoder", tmp_path / "hf")
    theirs, ours = AutoTokenizer.from_pretrained(str(hf_dir)), load_tokenizer(None, str(tmp_path / "sp.model"))
    texts = ["def add(a, b):\n    return a + b", "The quick brown fox", "x  y\n\n z"]
    if not dummy_prefix:  # with a dummy prefix, text that starts with a space differs (docs/model.md)
        texts.append(" leading space")
    for text in texts:
        assert theirs.encode(text, add_special_tokens=False) == ours.encode(text), text
