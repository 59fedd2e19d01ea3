"""The CrystalCoder layout (the released Crystal model; GPT-2-style modules, Conv1D weights stored [in, out]).

Config semantics follow CrystalCoder's modeling code (megacrystal ships its own, `megacrystal/hf/remote/`):
rotary_dim null or 0 rotates the whole head; scale_attn_weights=false, scale_attn_by_inverse_layer_idx=true
change the scores and cannot be imported; a model without rotary cannot be exported.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from .layout_common import (
    LayoutError,
    check_used,
    get_shape,
    need,
    positive_int,
    qkv_runs,
    qkv_split,
    true_shapes,
    whole,
)

CRYSTALCODER_AUTO_MAP = {
    "AutoConfig": "configuration_crystalcoder.CrystalCoderConfig",
    "AutoModel": "modeling_crystalcoder.CrystalCoderModel",
    "AutoModelForCausalLM": "modeling_crystalcoder.CrystalCoderLMHeadModel",
}


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
        rot > 0,
        fmt,
        "the layout cannot express a model without rotary: CrystalCoder reads rotary_dim 0 or null as "
        "the whole head; model.rotary_fraction=0",
    )
    need(
        cfg.rotary_interleaved,
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


def _check_attention_keys(conf: dict, where: str) -> None:
    """The CrystalCoder keys that change the function and have no ModelConfig counterpart: refuse the values
    megacrystal's model cannot compute. reorder_and_upcast_attn only moves the score math to fp32 (same
    function; our attention keeps fp32 softmax statistics anyway), so it is accepted either way."""
    if conf.get("scale_attn_weights", True) is not True:
        raise LayoutError(
            f"{where}: scale_attn_weights={conf.get('scale_attn_weights')!r}; megacrystal's attention always "
            "scales scores (1/d or 1/sqrt(d)), so this model cannot be imported"
        )
    if conf.get("scale_attn_by_inverse_layer_idx", False) is not False:
        raise LayoutError(
            f"{where}: scale_attn_by_inverse_layer_idx={conf.get('scale_attn_by_inverse_layer_idx')!r}; "
            "megacrystal's attention has no per-layer 1/(layer+1) score scale, so this model cannot be imported"
        )
    if not isinstance(conf.get("reorder_and_upcast_attn", False), bool):
        raise LayoutError(f"{where}: reorder_and_upcast_attn={conf.get('reorder_and_upcast_attn')!r}; expected a bool")
    for key, neutral in (("add_cross_attention", False), ("alibi_scaling", None)):
        if conf.get(key, neutral) not in (neutral,):
            raise LayoutError(f"{where}: {key}={conf.get(key)!r}; a decoder with rotary positions only is supported")


def crystalcoder_to_model_config(conf: dict, where: str) -> ModelConfig:
    act = conf.get("activation_function", "swiglu")
    if act != "swiglu":
        raise LayoutError(f"{where}: activation_function {act!r}; only swiglu CrystalCoder models are supported")
    if conf.get("position_embedding_type", "rotary") != "rotary":
        raise LayoutError(f"{where}: position_embedding_type {conf.get('position_embedding_type')!r}; expected rotary")
    h, heads = positive_int(conf, "n_embd", where), positive_int(conf, "n_head", where)
    if h % heads:
        raise LayoutError(f"{where}: n_embd={h} is not divisible by n_head={heads}")
    d = h // heads
    _check_attention_keys(conf, where)
    raw_rot = conf.get("rotary_dim")
    if raw_rot is not None and (not isinstance(raw_rot, int) or isinstance(raw_rot, bool)):
        raise LayoutError(f"{where}: rotary_dim={raw_rot!r}; expected null or an integer")
    rot = raw_rot or d  # CrystalCoder's code: rotary_dim null or 0 rotates the whole head
    if rot < 0 or rot > d or rot % 2:
        raise LayoutError(f"{where}: rotary_dim={rot}; expected an even number <= head dim {d}")
    mup = not _neutral_mup(conf)
    width = float(conf.get("mup_width_scale", 1.0))
    cfg = ModelConfig(
        family="crystal",
        num_layers=positive_int(conf, "n_layer", where),
        hidden_size=h,
        num_heads=heads,
        num_kv_heads=heads,
        ffn_hidden_size=int(conf.get("n_inner") or 4 * h),
        vocab_size=positive_int(conf, "vocab_size", where),
        max_seq_len=positive_int(conf, "n_positions", where),
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


def crystalcoder_plan(conf: dict, shapes: dict, where: str) -> tuple[ModelConfig, dict]:
    """-> (our config, {our name: (true shape, [Run])}) from config.json and the HF tensors' shapes."""
    cfg = crystalcoder_to_model_config(conf, where)
    h, f, v, hq, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size, cfg.num_heads, cfg.head_dim
    used: set = set()

    def get(key, shape):
        used.add(key)
        return get_shape(shapes, key, shape, where)

    plan = {"embed.weight": ((v, h), whole(get("transformer.wte.weight", (v, h)), v))}
    for i in range(cfg.num_layers):
        p, t = f"layers.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            for n in ("weight", "bias"):
                plan[f"{p}{ours}.{n}"] = ((h,), whole(get(f"{t}{theirs}.{n}", (h,)), h))
        w = get(t + "attn.c_attn.weight", (h, 3 * h))  # Conv1D [in, out]: q, k, v are column blocks
        b = get(t + "attn.c_attn.bias", (3 * h,))
        plan[p + "attn.qkv.weight"] = ((3 * h, h), qkv_runs((w, 0), (w, h), (w, 2 * h), hq, hq, d, transposed=True))
        plan[p + "attn.qkv.bias"] = ((3 * h,), qkv_runs((b, 0), (b, h), (b, 2 * h), hq, hq, d))
        for ours, theirs, (rows, cols) in (
            ("attn.proj", "attn.c_proj", (h, h)),
            ("mlp.up", "mlp.c_fc", (h, f)),
            ("mlp.gate", "mlp.c_fc2", (h, f)),
            ("mlp.down", "mlp.c_proj", (f, h)),
        ):
            plan[p + ours + ".weight"] = ((cols, rows), whole(get(t + theirs + ".weight", (rows, cols)), cols, True))
            plan[p + ours + ".bias"] = ((cols,), whole(get(t + theirs + ".bias", (cols,)), cols))
    for n in ("weight", "bias"):
        plan[f"final_norm.{n}"] = ((h,), whole(get(f"transformer.ln_f.{n}", (h,)), h))
    if not cfg.tie_embeddings:
        plan["head.weight"] = ((v, h), whole(get("lm_head.weight", (v, h)), v))
    else:
        used.add("lm_head.weight")  # a tied copy some checkpoints carry
    check_used(shapes, used, where)
    return cfg, plan
