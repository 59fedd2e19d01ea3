"""Our serial state dict <-> the two Hugging Face layouts (pure functions; files are convert.py's job).

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

from .layout_common import LayoutError, interleaved_to_half, qkv_join, qkv_split
from .layout_crystalcoder import (
    CRYSTALCODER_AUTO_MAP,
    crystalcoder_config,
    crystalcoder_plan,
    crystalcoder_to_model_config,
    to_crystalcoder,
)
from .layout_llama import llama_config, llama_plan, llama_to_model_config, to_llama

__all__ = [
    "CRYSTALCODER_AUTO_MAP",
    "LAYOUTS",
    "LayoutError",
    "crystalcoder_config",
    "crystalcoder_plan",
    "crystalcoder_to_model_config",
    "interleaved_to_half",
    "llama_config",
    "llama_plan",
    "llama_to_model_config",
    "qkv_join",
    "qkv_split",
    "to_crystalcoder",
    "to_llama",
]

LAYOUTS = {
    "crystalcoder": (crystalcoder_config, to_crystalcoder, crystalcoder_plan),
    "llama": (llama_config, to_llama, llama_plan),
}
