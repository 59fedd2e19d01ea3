"""The LLaMA layout (`transformers.LlamaForCausalLM`)."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from .layout_common import (
    LayoutError,
    check_used,
    get_shape,
    interleaved_to_half,
    need,
    positive_int,
    qkv_runs,
    qkv_split,
    true_shapes,
    whole,
)


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
    h, heads = positive_int(conf, "hidden_size", where), positive_int(conf, "num_attention_heads", where)
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
        num_layers=positive_int(conf, "num_hidden_layers", where),
        hidden_size=h,
        num_heads=heads,
        num_kv_heads=kv,
        ffn_hidden_size=positive_int(conf, "intermediate_size", where),
        vocab_size=positive_int(conf, "vocab_size", where),
        max_seq_len=positive_int(conf, "max_position_embeddings", where),
        norm="rmsnorm",
        norm_eps=float(conf.get("rms_norm_eps", 1e-6)),
        rotary_fraction=1.0,
        rotary_interleaved=False,
        rotary_base=base,
        bias=ab,
        tie_embeddings=bool(conf.get("tie_word_embeddings", False)),
        mup=False,
    ).resolve()


def llama_plan(conf: dict, shapes: dict, where: str) -> tuple[ModelConfig, dict]:
    """-> (our config, {our name: (true shape, [Run])}) from config.json and the HF tensors' shapes."""
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
        return get_shape(shapes, key, shape, where)

    def one(key, shape):
        return (shape, whole(get(key, shape), shape[0]))

    plan = {"embed.weight": one("model.embed_tokens.weight", (v, h))}
    names = ["weight"] + (["bias"] if cfg.bias else [])
    for i in range(cfg.num_layers):
        p, t = f"layers.{i}.", f"model.layers.{i}."
        plan[p + "norm1.weight"] = one(t + "input_layernorm.weight", (h,))
        plan[p + "norm2.weight"] = one(t + "post_attention_layernorm.weight", (h,))
        for n in names:

            def shape(rows, cols, n=n):
                return (rows, cols) if n == "weight" else (rows,)

            q = get(f"{t}self_attn.q_proj.{n}", shape(hq * d, h))
            k = get(f"{t}self_attn.k_proj.{n}", shape(hk * d, h))
            vv = get(f"{t}self_attn.v_proj.{n}", shape(hk * d, h))
            plan[f"{p}attn.qkv.{n}"] = (shape((hq + 2 * hk) * d, h), qkv_runs((q, 0), (k, 0), (vv, 0), hq, hk, d))
            plan[f"{p}attn.proj.{n}"] = one(f"{t}self_attn.o_proj.{n}", shape(h, hq * d))
            plan[f"{p}mlp.up.{n}"] = one(f"{t}mlp.up_proj.{n}", shape(f, h))
            plan[f"{p}mlp.gate.{n}"] = one(f"{t}mlp.gate_proj.{n}", shape(f, h))
            plan[f"{p}mlp.down.{n}"] = one(f"{t}mlp.down_proj.{n}", shape(h, f))
    plan["final_norm.weight"] = one("model.norm.weight", (h,))
    if not cfg.tie_embeddings:
        plan["head.weight"] = one("lm_head.weight", (v, h))
    else:
        used.add("lm_head.weight")
    check_used(shapes, used, where)
    return cfg, plan
