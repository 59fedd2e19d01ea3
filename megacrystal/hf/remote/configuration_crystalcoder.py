"""CrystalCoder configuration for Hugging Face transformers (shipped into every crystalcoder export).

Same keys, defaults and meaning as the configuration of the released CrystalCoder model (GPT-2 names:
n_embd, n_layer, n_head, n_inner, n_positions; plus rotary_dim and the muP scales), so a released
config.json loads unchanged. Written for megacrystal; self-contained (imports transformers only),
works on transformers 4.36+ and 5.x.
"""

try:  # transformers 5.x spells the base class PreTrainedConfig and keeps the old name as an alias
    from transformers import PreTrainedConfig as _BaseConfig
except ImportError:  # transformers 4.x
    from transformers import PretrainedConfig as _BaseConfig


class CrystalCoderConfig(_BaseConfig):
    """GPT-2-style decoder with SwiGLU, partial GPT-J rotary and muP scales.

    rotary_dim: rotated dims per head; None or 0 mean the whole head (as in the released code).
    mup_width_scale (m), mup_embeddings_scale, mup_output_alpha: embeddings x mup_embeddings_scale,
    logits x mup_output_alpha * m. mup_scale_qk_dot_by_d: scores q.k / d instead of / sqrt(d)
    (only when scale_attn_weights). scale_attn_by_inverse_layer_idx: scores further / (layer + 1).
    reorder_and_upcast_attn: scores and softmax in fp32 whatever the model dtype.
    """

    model_type = "crystalcoder"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    def __init__(
        self,
        vocab_size=32032,
        n_positions=2048,
        n_embd=4096,
        n_layer=32,
        n_head=32,
        n_inner=None,
        activation_function="swiglu",
        resid_pdrop=0.1,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        scale_attn_weights=True,
        use_cache=True,
        bos_token_id=1,
        eos_token_id=2,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        position_embedding_type="rotary",
        rotary_dim=None,
        mup_width_scale=1.0,
        mup_embeddings_scale=1.0,
        mup_output_alpha=1.0,
        mup_scale_qk_dot_by_d=False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_inner = n_inner
        self.activation_function = activation_function
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attn_pdrop = attn_pdrop
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.scale_attn_weights = scale_attn_weights
        self.use_cache = use_cache
        self.scale_attn_by_inverse_layer_idx = scale_attn_by_inverse_layer_idx
        self.reorder_and_upcast_attn = reorder_and_upcast_attn
        self.position_embedding_type = position_embedding_type
        self.rotary_dim = rotary_dim
        self.mup_width_scale = mup_width_scale
        self.mup_embeddings_scale = mup_embeddings_scale
        self.mup_output_alpha = mup_output_alpha
        self.mup_scale_qk_dot_by_d = mup_scale_qk_dot_by_d
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
