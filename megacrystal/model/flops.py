"""The model's own FLOP accounting per token (the MFU numerator, and the planner's check of its counts).

6·N (N = non-embedding parameters + the output head) plus attention 12·layers·hidden·seq (causal:
half of 12·L·h·s is skipped by the kernels, but the common convention — PaLM, Megatron — counts it
whole). Used by the training loop's MFU (train/metrics.py) and by `megacrystal plan`.
"""

from __future__ import annotations

from ..config import ModelConfig


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    h, L, f, v = cfg.hidden_size, cfg.num_layers, cfg.ffn_hidden_size, cfg.vocab_size
    d = cfg.head_dim
    per_layer = h * (cfg.num_heads + 2 * cfg.num_kv_heads) * d + cfg.num_heads * d * h + 3 * h * f
    n = L * per_layer + v * h  # matmul parameters incl. the output head
    return 6.0 * n + 12.0 * L * h * seq_len
