"""Our serial state dict <-> the two Hugging Face layouts (pure functions; files are hf.py's job).

CrystalCoder (the released Crystal model, GPT-2-style modules, Conv1D weights stored [in, out]):
    transformer.wte.weight                 embedding (tied head: no lm_head.weight unless untied)
    transformer.h.N.ln_1.{weight,bias}     norm before attention
    transformer.h.N.attn.c_attn.{weight,bias}   fused [q heads | k heads | v heads]
    transformer.h.N.attn.c_proj.{weight,bias}
    transformer.h.N.ln_2.{weight,bias}
    transformer.h.N.mlp.c_fc.{weight,bias} (up)   mlp.c_fc2 (gate)   mlp.c_proj (down)
    transformer.ln_f.{weight,bias}
LLaMA (`transformers.LlamaForCausalLM`): model.embed_tokens, model.layers.N.{input_layernorm,
    self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head.

Our fused QKV rows are grouped by KV head ([q of group j | k_j | v_j] for each j); both HF layouts
keep q, k, v apart. HF LLaMA rotates the full head with rotate-half; a model with interleaved pairs is
exported with each q/k head's rows permuted (evens then odds), which makes the two identical.
Both layouts hold true shapes: padding (vocabulary rows, FFN inner size; see padding.py) is cut on
export and restored, as zeros, on import.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from .hf_tensors import (
    LayoutError,
    check_used,
    get_tensor,
    interleaved_to_half,
    need,
    qkv_join,
    qkv_split,
    serial_shapes,
    true_shapes,
)

CRYSTALCODER_AUTO_MAP = {
    "AutoConfig": "configuration_crystalcoder.CrystalCoderConfig",
    "AutoModel": "modeling_crystalcoder.CrystalCoderModel",
    "AutoModelForCausalLM": "modeling_crystalcoder.CrystalCoderLMHeadModel",
}
# ----------------------------------------------------------------------------- CrystalCoder


def crystalcoder_config(cfg: ModelConfig, bos: int | None = 1, eos: int | None = 2) -> dict:
    fmt = "crystalcoder"
    need(cfg.norm == "layernorm", fmt, f"the layout has LayerNorm with bias; model.norm={cfg.norm}")
    need(cfg.bias, fmt, "the layout has biases on every linear but the head; model.bias=false")
    need(
        cfg.num_kv_heads == cfg.num_heads,
        fmt,
        f"the layout has no grouped-query attention; "
        f"model.num_kv_heads={cfg.num_kv_heads} != num_heads={cfg.num_heads}",
    )
    rot = int(cfg.head_dim * cfg.rotary_fraction)
    need(
        rot == 0 or cfg.rotary_interleaved,
        fmt,
        "the layout rotates interleaved (GPT-J) pairs; model.rotary_interleaved=false",
    )
    need(
        cfg.rotary_base == 10000.0, fmt, f"the layout fixes the RoPE base at 10000; model.rotary_base={cfg.rotary_base}"
    )
    mup = bool(cfg.mup)
    return {
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "resid_pdrop": 0.0,
        "mup_embeddings_scale": cfg.mup_embeddings_scale if mup else 1.0,
        "n_inner": cfg.ffn_hidden_size,
        "n_embd": cfg.hidden_size,
        "layer_norm_epsilon": cfg.norm_eps,
        "n_positions": cfg.max_seq_len,
        "activation_function": "swiglu",
        "n_head": cfg.num_heads,
        "n_layer": cfg.num_layers,
        "mup_output_alpha": cfg.mup_output_alpha if mup else 1.0,
        "mup_width_scale": cfg.width_mult if mup else 1.0,
        "position_embedding_type": "rotary",
        "rotary_dim": rot,
        "mup_scale_qk_dot_by_d": bool(mup and cfg.mup_scale_qk_dot_by_d),
        "tie_word_embeddings": bool(cfg.tie_embeddings),
        "vocab_size": cfg.vocab_size,
        "embd_pdrop": 0.0,
        "model_type": "crystalcoder",
        "use_cache": True,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "auto_map": dict(CRYSTALCODER_AUTO_MAP),
        "architectures": ["CrystalCoderLMHeadModel"],
    }


def to_crystalcoder(cfg: ModelConfig, sd: dict) -> dict[str, torch.Tensor]:
    hq, hk, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    sd = true_shapes(cfg, sd)
    out = {"transformer.wte.weight": sd["embed.weight"]}
    for i in range(cfg.num_layers):
        p, h = f"layers.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[h + theirs + ".weight"] = sd[p + ours + ".weight"]
            out[h + theirs + ".bias"] = sd[p + ours + ".bias"]
        out[h + "attn.c_attn.weight"] = torch.cat(qkv_split(sd[p + "attn.qkv.weight"], hq, hk, d)).t()
        out[h + "attn.c_attn.bias"] = torch.cat(qkv_split(sd[p + "attn.qkv.bias"], hq, hk, d))
        for ours, theirs in (
            ("attn.proj", "attn.c_proj"),
            ("mlp.up", "mlp.c_fc"),
            ("mlp.gate", "mlp.c_fc2"),
            ("mlp.down", "mlp.c_proj"),
        ):
            out[h + theirs + ".weight"] = sd[p + ours + ".weight"].t()
            out[h + theirs + ".bias"] = sd[p + ours + ".bias"]
    out["transformer.ln_f.weight"] = sd["final_norm.weight"]
    out["transformer.ln_f.bias"] = sd["final_norm.bias"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def _neutral_mup(conf: dict) -> bool:
    return (
        float(conf.get("mup_width_scale", 1.0)) == 1.0
        and float(conf.get("mup_output_alpha", 1.0)) == 1.0
        and float(conf.get("mup_embeddings_scale", 1.0)) == 1.0
        and not conf.get("mup_scale_qk_dot_by_d", False)
    )


def _int(conf: dict, key: str, where: str) -> int:
    v = conf.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise LayoutError(f"{where}: {key} must be a positive integer, got {v!r}")
    return v


def crystalcoder_to_model_config(conf: dict, where: str) -> ModelConfig:
    act = conf.get("activation_function", "swiglu")
    if act != "swiglu":
        raise LayoutError(f"{where}: activation_function {act!r}; only swiglu CrystalCoder models are supported")
    if conf.get("position_embedding_type", "rotary") != "rotary":
        raise LayoutError(f"{where}: position_embedding_type {conf.get('position_embedding_type')!r}; expected rotary")
    h, heads = _int(conf, "n_embd", where), _int(conf, "n_head", where)
    if h % heads:
        raise LayoutError(f"{where}: n_embd={h} is not divisible by n_head={heads}")
    d = h // heads
    rot = int(conf.get("rotary_dim") or 0)
    if rot < 0 or rot > d or rot % 2:
        raise LayoutError(f"{where}: rotary_dim={rot}; expected an even number <= head dim {d}")
    mup = not _neutral_mup(conf)
    width = float(conf.get("mup_width_scale", 1.0))
    cfg = ModelConfig(
        family="crystal",
        num_layers=_int(conf, "n_layer", where),
        hidden_size=h,
        num_heads=heads,
        num_kv_heads=heads,
        ffn_hidden_size=int(conf.get("n_inner") or 4 * h),
        vocab_size=_int(conf, "vocab_size", where),
        max_seq_len=_int(conf, "n_positions", where),
        norm="layernorm",
        norm_eps=float(conf.get("layer_norm_epsilon", 1e-5)),
        rotary_fraction=rot / d,
        rotary_interleaved=True,
        rotary_base=10000.0,
        bias=True,
        tie_embeddings=bool(conf.get("tie_word_embeddings", True)),
        mup=mup,
        mup_base_width=round(width * h) if mup else None,
        mup_embeddings_scale=float(conf.get("mup_embeddings_scale", 1.0)) if mup else 14.6,
        mup_output_alpha=float(conf.get("mup_output_alpha", 1.0)) if mup else 2.22,
        mup_scale_qk_dot_by_d=bool(conf.get("mup_scale_qk_dot_by_d", False)) if mup else True,
    ).resolve()
    if int(cfg.head_dim * cfg.rotary_fraction) != rot:
        raise LayoutError(f"{where}: rotary_dim={rot} cannot be expressed as a fraction of head dim {d}")
    if mup and abs(cfg.width_mult - width) > 1e-12 * max(1.0, width):
        raise LayoutError(f"{where}: mup_width_scale={width} is not base_width/n_embd for an integer base width")
    return cfg


def from_crystalcoder(conf: dict, tensors: dict, where: str) -> tuple[ModelConfig, dict]:
    cfg = crystalcoder_to_model_config(conf, where)
    h, f, v, hq, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size, cfg.num_heads, cfg.head_dim
    used: set = set()

    def get(key, shape):
        used.add(key)
        return get_tensor(tensors, key, shape, where)

    sd = {"embed.weight": get("transformer.wte.weight", (v, h))}
    for i in range(cfg.num_layers):
        p, t = f"layers.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            sd[p + ours + ".weight"] = get(t + theirs + ".weight", (h,))
            sd[p + ours + ".bias"] = get(t + theirs + ".bias", (h,))
        w = get(t + "attn.c_attn.weight", (h, 3 * h)).t()
        b = get(t + "attn.c_attn.bias", (3 * h,))
        sd[p + "attn.qkv.weight"] = qkv_join(*w.split(h), hq, hq, d)
        sd[p + "attn.qkv.bias"] = qkv_join(*b.split(h), hq, hq, d)
        for ours, theirs, shape in (
            ("attn.proj", "attn.c_proj", (h, h)),
            ("mlp.up", "mlp.c_fc", (h, f)),
            ("mlp.gate", "mlp.c_fc2", (h, f)),
            ("mlp.down", "mlp.c_proj", (f, h)),
        ):
            sd[p + ours + ".weight"] = get(t + theirs + ".weight", shape).t()
            sd[p + ours + ".bias"] = get(t + theirs + ".bias", (shape[1],))
    sd["final_norm.weight"] = get("transformer.ln_f.weight", (h,))
    sd["final_norm.bias"] = get("transformer.ln_f.bias", (h,))
    if not cfg.tie_embeddings:
        sd["head.weight"] = get("lm_head.weight", (v, h))
    else:
        used.add("lm_head.weight")  # a tied copy some checkpoints carry
    check_used(tensors, used, where)
    return cfg, serial_shapes(cfg, sd)


# ----------------------------------------------------------------------------- LLaMA


def llama_config(cfg: ModelConfig, bos: int | None = 1, eos: int | None = 2, dtype: str = "float32") -> dict:
    fmt = "llama"
    need(
        cfg.norm == "rmsnorm", fmt, f"LlamaForCausalLM uses RMSNorm; model.norm={cfg.norm} (use --format crystalcoder)"
    )
    need(
        cfg.rotary_fraction == 1.0,
        fmt,
        f"LlamaForCausalLM rotates the whole head; "
        f"model.rotary_fraction={cfg.rotary_fraction} (use --format crystalcoder)",
    )
    need(not cfg.mup, fmt, "LlamaForCausalLM has no muP scales (embedding, 1/d scores, logits); model.mup=true")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rotary_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rotary_base},
        "attention_bias": bool(cfg.bias),
        "mlp_bias": bool(cfg.bias),
        "tie_word_embeddings": bool(cfg.tie_embeddings),
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def to_llama(cfg: ModelConfig, sd: dict) -> dict[str, torch.Tensor]:
    hq, hk, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    sd = true_shapes(cfg, sd)
    out = {"model.embed_tokens.weight": sd["embed.weight"]}
    names = ["weight"] + (["bias"] if cfg.bias else [])
    for i in range(cfg.num_layers):
        p, t = f"layers.{i}.", f"model.layers.{i}."
        out[t + "input_layernorm.weight"] = sd[p + "norm1.weight"]
        out[t + "post_attention_layernorm.weight"] = sd[p + "norm2.weight"]
        for n in names:
            q, k, v = qkv_split(sd[f"{p}attn.qkv.{n}"], hq, hk, d)
            if cfg.rotary_interleaved:
                q, k = interleaved_to_half(q, hq, d), interleaved_to_half(k, hk, d)
            out[f"{t}self_attn.q_proj.{n}"], out[f"{t}self_attn.k_proj.{n}"], out[f"{t}self_attn.v_proj.{n}"] = q, k, v
            out[f"{t}self_attn.o_proj.{n}"] = sd[f"{p}attn.proj.{n}"]
            for ours, theirs in (("up", "up_proj"), ("gate", "gate_proj"), ("down", "down_proj")):
                out[f"{t}mlp.{theirs}.{n}"] = sd[f"{p}mlp.{ours}.{n}"]
    out["model.norm.weight"] = sd["final_norm.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    return {k: x.contiguous() for k, x in out.items()}


def llama_to_model_config(conf: dict, where: str) -> ModelConfig:
    if conf.get("hidden_act", "silu") != "silu":
        raise LayoutError(f"{where}: hidden_act {conf.get('hidden_act')!r}; expected silu (SwiGLU)")
    rope = conf.get("rope_parameters") or conf.get("rope_scaling") or {}
    rtype = rope.get("rope_type", rope.get("type", "default"))
    if rtype != "default" or float(rope.get("partial_rotary_factor", conf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise LayoutError(f"{where}: RoPE {rope!r}; only the default full-head rotary is supported")
    base = float(rope.get("rope_theta", conf.get("rope_theta", 10000.0)))
    h, heads = _int(conf, "hidden_size", where), _int(conf, "num_attention_heads", where)
    kv = int(conf.get("num_key_value_heads") or heads)
    if h % heads or (conf.get("head_dim") not in (None, h // heads)):
        raise LayoutError(
            f"{where}: head_dim={conf.get('head_dim')} must be hidden_size/num_attention_heads = {h}/{heads}"
        )
    ab, mb = bool(conf.get("attention_bias", False)), bool(conf.get("mlp_bias", False))
    if ab != mb:
        raise LayoutError(f"{where}: attention_bias={ab} but mlp_bias={mb}; model.bias covers both")
    return ModelConfig(
        family="llama",
        num_layers=_int(conf, "num_hidden_layers", where),
        hidden_size=h,
        num_heads=heads,
        num_kv_heads=kv,
        ffn_hidden_size=_int(conf, "intermediate_size", where),
        vocab_size=_int(conf, "vocab_size", where),
        max_seq_len=_int(conf, "max_position_embeddings", where),
        norm="rmsnorm",
        norm_eps=float(conf.get("rms_norm_eps", 1e-6)),
        rotary_fraction=1.0,
        rotary_interleaved=False,
        rotary_base=base,
        bias=ab,
        tie_embeddings=bool(conf.get("tie_word_embeddings", False)),
        mup=False,
    ).resolve()


def from_llama(conf: dict, tensors: dict, where: str) -> tuple[ModelConfig, dict]:
    cfg = llama_to_model_config(conf, where)
    h, f, v, hq, hk, d = (
        cfg.hidden_size,
        cfg.ffn_hidden_size,
        cfg.vocab_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
    )
    used: set = set()

    def get(key, shape):
        used.add(key)
        return get_tensor(tensors, key, shape, where)

    sd = {"embed.weight": get("model.embed_tokens.weight", (v, h))}
    names = ["weight"] + (["bias"] if cfg.bias else [])
    for i in range(cfg.num_layers):
        p, t = f"layers.{i}.", f"model.layers.{i}."
        sd[p + "norm1.weight"] = get(t + "input_layernorm.weight", (h,))
        sd[p + "norm2.weight"] = get(t + "post_attention_layernorm.weight", (h,))
        for n in names:

            def shape(rows, cols, n=n):
                return (rows, cols) if n == "weight" else (rows,)

            q = get(f"{t}self_attn.q_proj.{n}", shape(hq * d, h))
            k = get(f"{t}self_attn.k_proj.{n}", shape(hk * d, h))
            vv = get(f"{t}self_attn.v_proj.{n}", shape(hk * d, h))
            sd[f"{p}attn.qkv.{n}"] = qkv_join(q, k, vv, hq, hk, d)
            sd[f"{p}attn.proj.{n}"] = get(f"{t}self_attn.o_proj.{n}", shape(h, hq * d))
            sd[f"{p}mlp.up.{n}"] = get(f"{t}mlp.up_proj.{n}", shape(f, h))
            sd[f"{p}mlp.gate.{n}"] = get(f"{t}mlp.gate_proj.{n}", shape(f, h))
            sd[f"{p}mlp.down.{n}"] = get(f"{t}mlp.down_proj.{n}", shape(h, f))
    sd["final_norm.weight"] = get("model.norm.weight", (h,))
    if not cfg.tie_embeddings:
        sd["head.weight"] = get("lm_head.weight", (v, h))
    else:
        used.add("lm_head.weight")
    check_used(tensors, used, where)
    return cfg, serial_shapes(cfg, sd)


LAYOUTS = {
    "crystalcoder": (crystalcoder_config, to_crystalcoder, from_crystalcoder),
    "llama": (llama_config, to_llama, from_llama),
}
