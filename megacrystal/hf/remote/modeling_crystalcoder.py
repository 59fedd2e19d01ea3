"""CrystalCoder modeling code for Hugging Face transformers (shipped into every crystalcoder export).

Written for megacrystal; loads the released CrystalCoder checkpoints unchanged (same module and weight
names: transformer.wte / h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_fc2, mlp.c_proj} /
ln_f, Conv1D weights stored [in, out]; tied head unless tie_word_embeddings is false) and gives the same
function as megacrystal's own forward:

    x = wte(ids) [+ wpe(pos)] * mup_embeddings_scale
    per block: x += c_proj(attn(ln_1(x)));  x += c_proj(c_fc(ln_2(x)) * silu(c_fc2(ln_2(x))))
    logits = ln_f(x) @ wte^T * mup_output_alpha * mup_width_scale

Attention: GPT-J (interleaved) rotary on the first `rotary_dim` dims of each head (None/0: the whole
head), frequencies over the rotated dims, base 10000; scores scaled 1/d (mup_scale_qk_dot_by_d) or
1/sqrt(d), through torch's scaled_dot_product_attention. Positions come from `position_ids`, else from
the attention mask (so left-padded batches give each row the logits it has alone), else from the cache
length. KV cache through transformers' Cache objects; generate() (greedy, sampling, beam) through
GenerationMixin. Runs on transformers 4.36+ and 5.x, any float dtype.
"""

import math

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_crystalcoder import CrystalCoderConfig

try:
    from transformers import GenerationMixin
except ImportError:  # very old releases keep it in transformers.generation only
    from transformers.generation import GenerationMixin

_TF_MAJOR = int(transformers.__version__.split(".")[0])


def _cache_field(output_cls) -> str:
    """transformers 5.x names the KV cache `cache`, 4.x `past_key_values` (inputs and outputs alike)."""
    return "cache" if "cache" in getattr(output_cls, "__dataclass_fields__", {}) else "past_key_values"


_CACHE = _cache_field(CausalLMOutputWithPast)
_BASE_CACHE = _cache_field(BaseModelOutputWithPast)


def check_supported(config) -> None:
    """Refuse, naming the key, every config value this code does not implement."""

    def bad(key, why):
        raise ValueError(f"CrystalCoder config: {key}={getattr(config, key, None)!r} is not supported here ({why})")

    if config.n_embd % config.n_head:
        bad("n_head", f"n_embd={config.n_embd} must be divisible by it")
    if config.position_embedding_type not in ("rotary", "learned"):
        bad("position_embedding_type", "expected 'rotary' or 'learned'; ALiBi is not implemented")
    if config.activation_function != "swiglu" and config.activation_function not in ACT2FN:
        bad("activation_function", "expected 'swiglu' or a transformers activation name")
    head_dim = config.n_embd // config.n_head
    rot = config.rotary_dim or head_dim
    if config.position_embedding_type == "rotary" and (not isinstance(rot, int) or rot % 2 or not 0 < rot <= head_dim):
        bad("rotary_dim", f"expected null or an even number of dims <= head dim {head_dim}")
    if getattr(config, "add_cross_attention", False):
        bad("add_cross_attention", "a decoder-only model; cross-attention is not implemented")
    alibi = getattr(config, "alibi_scaling", None)
    if alibi is not None:
        bad("alibi_scaling", "ALiBi is not implemented")


class Conv1D(nn.Module):
    """GPT-2's linear with the weight stored [in, out]: y = x @ W + b."""

    def __init__(self, n_in: int, n_out: int, residual: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.residual = residual  # output projection onto the residual stream (scaled init)

    def forward(self, x):
        shape = x.shape[:-1] + (self.weight.shape[1],)
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(shape)


def rotary_tables(position_ids: torch.Tensor, rot: int, dtype: torch.dtype):
    """cos, sin [b, t, 1, rot] for GPT-J rotary (each frequency repeated for its pair), base 10000."""
    wide = torch.float32 if position_ids.device.type == "mps" else torch.float64
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rot, 2, dtype=wide, device=position_ids.device) / rot))
    ang = position_ids.to(wide)[..., None] * inv_freq
    cos = ang.cos().repeat_interleave(2, dim=-1)[:, :, None, :]
    sin = ang.sin().repeat_interleave(2, dim=-1)[:, :, None, :]
    return cos.to(dtype), sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x [b, t, h, d] in interleaved pairs (0,1), (2,3), ..."""
    rot = cos.shape[-1]
    xr, xp = x[..., :rot], x[..., rot:]
    turned = torch.stack((-xr[..., 1::2], xr[..., 0::2]), dim=-1).flatten(-2)
    return torch.cat((xr * cos + turned * sin, xp), dim=-1)


class CrystalCoderAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd, residual=True)
        scale = 1.0
        if config.scale_attn_weights:
            scale /= self.head_dim ** (1.0 if config.mup_scale_qk_dot_by_d else 0.5)
        if config.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        self.scale = scale
        self.upcast = bool(config.reorder_and_upcast_attn)
        self.attn_pdrop = float(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, rope, mask, cache):
        b, t, _ = x.shape
        q, k, v = self.c_attn(x).view(b, t, 3, self.n_head, self.head_dim).unbind(2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [b, h, t, d]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        dtype = v.dtype
        if self.upcast:
            q, k, v = q.float(), k.float(), v.float()
        p = self.attn_pdrop if self.training else 0.0
        causal = mask is None  # no padding, no cache: torch may pick its fused causal kernels
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal, scale=self.scale)
        o = o.to(dtype).transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(o))


class CrystalCoderMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.swiglu = config.activation_function == "swiglu"
        self.c_fc = Conv1D(config.n_embd, inner)  # up
        if self.swiglu:
            self.c_fc2 = Conv1D(config.n_embd, inner)  # gate
        else:
            self.act = ACT2FN[config.activation_function]
        self.c_proj = Conv1D(inner, config.n_embd, residual=True)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        h = self.c_fc(x) * F.silu(self.c_fc2(x)) if self.swiglu else self.act(self.c_fc(x))
        return self.dropout(self.c_proj(h))


class CrystalCoderBlock(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CrystalCoderAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = CrystalCoderMLP(config)

    def forward(self, x, rope, mask, cache):
        x = x + self.attn(self.ln_1(x), rope, mask, cache)
        return x + self.mlp(self.ln_2(x))


class CrystalCoderPreTrainedModel(PreTrainedModel):
    config_class = CrystalCoderConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _no_split_modules = ["CrystalCoderBlock"]
    _supports_sdpa = True
    _supports_cache_class = True  # transformers 4.x: generate() hands us a DynamicCache
    _supports_static_cache = False
    _supports_quantized_cache = False
    # buffers some released checkpoints carry (GPT-2's causal mask); nothing here needs them
    _keys_to_ignore_on_load_unexpected = [r"h\.\d+\.attn\.bias", r"h\.\d+\.attn\.masked_bias"]

    def _init_weights(self, module):
        """Fresh parameters only: anything loaded from a checkpoint (flagged `_is_hf_initialized`) is kept."""
        c = self.config
        std = c.initializer_range * math.sqrt(c.mup_width_scale)
        with torch.no_grad():
            for name, p in module.named_parameters(recurse=False):
                if getattr(p, "_is_hf_initialized", False):
                    continue
                if isinstance(module, nn.LayerNorm):
                    p.fill_(1.0 if name == "weight" else 0.0)
                elif name == "bias":
                    p.zero_()
                elif isinstance(module, nn.Embedding):
                    p.normal_(0.0, c.initializer_range)
                elif getattr(module, "residual", False):
                    p.normal_(0.0, std / math.sqrt(2 * c.n_layer))
                else:
                    p.normal_(0.0, std)


def _as_cache(past):
    """A Cache object from what the caller gave (None, a Cache, or 4.x's legacy tuple of (k, v))."""
    if past is None or isinstance(past, Cache):
        return past
    if hasattr(DynamicCache, "from_legacy_cache"):
        return DynamicCache.from_legacy_cache(past)
    raise ValueError("CrystalCoder: pass the KV cache as a transformers Cache object, not a tuple")


def attention_bool_mask(attention_mask, b: int, t: int, past: int, device) -> torch.Tensor:
    """[b or 1, 1, t, past+t], True = may attend: causal, padded keys masked. A query always sees itself, so
    a padding row has one key instead of none (no NaN); real rows never see padding."""
    q = torch.arange(past, past + t, device=device)[:, None]
    k = torch.arange(past + t, device=device)[None, :]
    allowed = (k <= q)[None, None]
    if attention_mask is not None:
        if attention_mask.dim() != 2 or attention_mask.shape != (b, past + t):
            raise ValueError(
                f"CrystalCoder: attention_mask must be 2-D [batch, past+new] = {(b, past + t)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        allowed = (allowed & attention_mask[:, None, None, :].bool()) | (k == q)[None, None]
    return allowed


class CrystalCoderModel(CrystalCoderPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        check_supported(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = (
            nn.Embedding(config.n_positions, config.n_embd) if config.position_embedding_type == "learned" else None
        )
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([CrystalCoderBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        head_dim = config.n_embd // config.n_head
        self.rotary_dim = (config.rotary_dim or head_dim) if config.position_embedding_type == "rotary" else 0
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(
        self,
        input_ids=None,
        past_key_values=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=None,
        cache=None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("CrystalCoder: give exactly one of input_ids or inputs_embeds")
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        b, t = x.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        kv = _as_cache(cache if cache is not None else past_key_values)
        if use_cache and kv is None:
            kv = DynamicCache()
        past = kv.get_seq_length() if kv is not None else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past : past + t]
            else:
                position_ids = torch.arange(past, past + t, device=x.device)[None].expand(b, t)
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        x = self.drop(x * self.config.mup_embeddings_scale)
        rope = rotary_tables(position_ids, self.rotary_dim, x.dtype) if self.rotary_dim else None
        plain = attention_mask is None and past == 0
        mask = None if plain else attention_bool_mask(attention_mask, b, t, past, x.device)
        hidden = [] if output_hidden_states else None
        for block in self.h:
            if hidden is not None:
                hidden.append(x)
            x = block(x, rope, mask, kv)
        x = self.ln_f(x)
        if hidden is not None:
            hidden.append(x)
        out = BaseModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if hidden is not None else None,
            **{_BASE_CACHE: kv if use_cache else None},
        )
        return out if return_dict is not False else out.to_tuple()


class CrystalCoderLMHeadModel(CrystalCoderPreTrainedModel, GenerationMixin):
    # the tied head: 5.x takes {target: source}, 4.x a list of the tied names
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"} if _TF_MAJOR >= 5 else ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.transformer = CrystalCoderModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, value):
        self.transformer.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        past_key_values=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=None,
        cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        out = self.transformer(
            input_ids=input_ids,
            past_key_values=cache if cache is not None else past_key_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        x = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x) * (self.config.mup_output_alpha * self.config.mup_width_scale)
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(shifted, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        result = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states,
            **{_CACHE: getattr(out, _BASE_CACHE)},
        )
        return result if return_dict is not False else result.to_tuple()

    def prepare_inputs_for_generation(
        self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None, use_cache=True, **kwargs
    ):
        kv = _as_cache(kwargs.get("cache", past_key_values))
        past = kv.get_seq_length() if kv is not None else 0
        inputs = {"attention_mask": attention_mask, "use_cache": use_cache, _CACHE: kv}
        if inputs_embeds is not None and past == 0:
            inputs["inputs_embeds"] = inputs_embeds
            t = inputs_embeds.shape[1]
        else:
            inputs["input_ids"] = input_ids[:, past:]
            t = inputs["input_ids"].shape[1]
        if attention_mask is not None:
            inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
        return inputs
