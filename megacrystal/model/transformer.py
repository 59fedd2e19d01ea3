"""One transformer for Crystal and LLaMA: every difference is a `ModelConfig` field.

Pre-norm blocks: h = x + Attn(Norm(x)); out = h + MLP(Norm(h)). Fused QKV weight laid out by
KV-head group ([q heads of group j | k_j | v_j] for each j), so tensor parallelism shards it by
contiguous rows. SwiGLU MLP: down(up(x) * silu(gate(x))). muP: embedding output x mup_embeddings_scale,
scores / d, logits x mup_output_alpha * m. The FFN inner size is zero-padded to the factory's
`padded_ffn` (a multiple of 64·tp) for fast matmul shapes; the output is exactly that of the true size.

Linears, embedding, head and loss come from a `Layers` factory (serial or tensor-parallel), and a
model may hold only a range of layers (`pre_process` = has the embedding, `post_process` = has the
final norm + head) so the pipeline can build one stage from the same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..ops.dispatch import op
from ..ops.precision import wide_dtype
from ..ops.rotary import rope_angles
from .attention import attention
from .compile import compile_blocks
from .kv_cache import KVCache
from .layers import LayerFactory, SerialLayers, mark
from .padding import set_true_shape, true_shape
from .recompute import recompute_groups, recompute_into, run_blocks


class Norm(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.rms = cfg.norm == "rmsnorm"
        self.eps = cfg.norm_eps
        self.weight = mark(nn.Parameter(torch.ones(cfg.hidden_size)), "ones")
        self.bias = None if self.rms else mark(nn.Parameter(torch.zeros(cfg.hidden_size)), "zeros")
        self._norm = op("norm", cfg.kernels, apex=cfg.use_apex_norm)

    def forward(self, x):
        return self._norm(x, self.weight, self.bias, self.eps, self.rms)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layers: LayerFactory):
        super().__init__()
        tp = layers.tp_size
        self.head_dim = d = cfg.head_dim
        self.hq, self.hk = cfg.num_heads // tp, cfg.num_kv_heads // tp
        self.group = cfg.num_heads // cfg.num_kv_heads
        self.qkv = layers.column(cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * d, cfg.bias, "hidden")
        self.proj = layers.row(cfg.num_heads * d, cfg.hidden_size, cfg.bias, "output")
        self.scale = 1.0 / d if (cfg.mup and cfg.mup_scale_qk_dot_by_d) else 1.0 / math.sqrt(d)
        self.interleaved = cfg.rotary_interleaved
        self.backend = cfg.attention_backend
        # split of the fused QKV output + rotary of q and k in one op (one pass forward, and a backward that
        # writes the packed d(qkv) directly instead of autograd's per-slice zero-filled buffers)
        self._qkv_rotary = op("qkv_rotary", cfg.kernels)

    def forward(self, x, cos, sin, segment_ids=None, bounds=None, cp=None, cache=None, selective: bool = False):
        """`bounds`: the batch's document boundaries (cu_seqlens, longest) for varlen kernels; `cp`: the
        ring attention context under context parallelism; `cache`: (KV cache, this layer's key) to decode
        incrementally (model/kv_cache.py); `selective`: recompute the core in the backward."""
        qkv = self.qkv(x)

        def core(qkv):  # rotary + attention: no parameters, recomputed under selective recompute
            b, s = qkv.shape[0], qkv.shape[1]
            q, k, v = self._qkv_rotary(
                qkv.view(b, s, self.hk, self.group + 2, self.head_dim), cos, sin, self.interleaved
            )
            if cache is not None:
                o = cache[0].attend(cache[1], q, k, v, self.scale, self.backend)
            elif cp is not None:  # context parallel: this rank holds part of the sequence (ring attention)
                o = cp.attention(q, k, v, self.scale, self.backend)
            else:
                o = attention(q, k, v, self.scale, segment_ids, self.backend, bounds)
            return o.reshape(b, s, self.hq * self.head_dim)

        if selective and cp is None and cache is None:  # (ring transfers and the cache are not replayed)
            return recompute_into(core, (qkv,), self.proj)
        return self.proj(core(qkv))


class MLP(nn.Module):
    """down(up(x) * silu(gate(x))) with the inner size padded by zeros: padded up/gate rows give 0,
    silu(0)·0 = 0, and the padded down columns are 0, so neither the output nor any true gradient changes."""

    def __init__(self, cfg: ModelConfig, layers: LayerFactory):
        super().__init__()
        h, f = cfg.hidden_size, cfg.ffn_hidden_size
        padded = layers.padded_ffn(f)
        self.up = layers.column(h, padded, cfg.bias, "hidden")
        self.gate = layers.column(h, padded, cfg.bias, "hidden")
        self.down = layers.row(padded, h, cfg.bias, "output")
        for lin in (self.up, self.gate):
            set_true_shape(lin.weight, (f, h))
            if lin.bias is not None:
                set_true_shape(lin.bias, (f,))
        set_true_shape(self.down.weight, (h, f))
        self._swiglu = op("swiglu", cfg.kernels)

    def forward(self, x, selective: bool = False):
        u, g = self.up(x), self.gate(x)
        if selective:  # keep up and gate, recompute the activation
            return recompute_into(self._swiglu, (u, g), self.down)
        return self.down(self._swiglu(u, g))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layers: LayerFactory):
        super().__init__()
        self.norm1 = Norm(cfg)
        self.attn = Attention(cfg, layers)
        self.norm2 = Norm(cfg)
        self.mlp = MLP(cfg, layers)
        self.selective = cfg.recompute == "selective"

    def forward(self, x, cos, sin, segment_ids=None, bounds=None, cp=None, cache=None):
        sel = self.selective and self.training and cache is None
        h = x + self.attn(self.norm1(x), cos, sin, segment_ids, bounds, cp, cache, sel)
        return h + self.mlp(self.norm2(h), sel)


class Transformer(nn.Module):
    """The whole model, or one pipeline stage of it (`layer_ids`, `pre_process`, `post_process`)."""

    def __init__(
        self,
        cfg: ModelConfig,
        layers: LayerFactory | None = None,
        layer_ids: Sequence[int] | None = None,
        pre_process: bool = True,
        post_process: bool = True,
    ):
        super().__init__()
        self.cfg = cfg = cfg.resolve()
        self.layers_factory = layers = layers or SerialLayers()
        self.pre_process, self.post_process = pre_process, post_process
        self.layer_ids = list(range(cfg.num_layers) if layer_ids is None else layer_ids)
        self.rot_dim = int(cfg.head_dim * cfg.rotary_fraction)
        self.embed = layers.embedding(cfg.vocab_size, cfg.hidden_size) if pre_process else None
        self.layers = nn.ModuleDict({str(i): Block(cfg, layers) for i in self.layer_ids})
        self.recompute = recompute_groups(
            len(self.layer_ids), cfg.recompute, cfg.recompute_method, cfg.recompute_num_layers
        )
        if cfg.compile and not any(p.is_meta for p in self.layers.parameters()):  # (a rehearsal runs eager)
            compile_blocks(list(self.layers.values()))
        if post_process:
            self.final_norm = Norm(cfg)
            if not cfg.tie_embeddings:
                self.head = layers.head(cfg.vocab_size, cfg.hidden_size, None)
            elif pre_process:
                self.head = layers.head(cfg.vocab_size, cfg.hidden_size, self.embed)
            else:
                self.head = layers.detached_tied_head(cfg.vocab_size, cfg.hidden_size)
        self.embed_scale = cfg.mup_embeddings_scale if cfg.mup else 1.0
        self.output_scale = cfg.mup_output_alpha * cfg.width_mult if cfg.mup else 1.0

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_angles(position_ids, self.rot_dim, self.cfg.rotary_base, wide_dtype(dtype))

    def forward(
        self,
        tokens: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        cp=None,
        kv_cache: KVCache | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """First stage takes `tokens` [b, s]; later stages `hidden`. The last stage returns logits, or
        per-token fp32 losses [b, s] when `labels` is given; other stages return hidden states.
        `cu_seqlens`/`max_seqlen`: the documents of `segment_ids` over the flattened batch (data/batch.py),
        for the varlen attention kernels; without them they are computed from `segment_ids` (a device sync).
        `cp`: under context parallelism, the micro-batch's ring attention context
        (`parallel.ring_attention.RingContext`: the tensors hold this rank's part of each sequence,
        `position_ids` their true positions).

        Incremental decoding: with `kv_cache` the tokens are each row's next ones after those the cache
        holds (positions follow on per row; position_ids and document masks are refused), and the cache
        keeps them. `logits_at` [b]: only the logits at that index of each row, as [b, 1, vocab]."""
        if self.pre_process:
            h = self.embed(tokens)
            if self.embed_scale != 1.0:
                h = h * self.embed_scale
            seq = tokens.shape[1]
            device = tokens.device
        else:
            h = hidden
            seq = (
                labels.shape[1]
                if labels is not None
                else (position_ids.shape[-1] if position_ids is not None else None)
            )
            device = h.device
        if kv_cache is not None:
            if position_ids is not None or (segment_ids is not None and self.cfg.document_mask):
                raise ValueError(
                    "KV-cache decoding: positions follow the cache and attention spans each row "
                    "(no position_ids or segment_ids; decode one document per row)"
                )
            if getattr(self.layers_factory, "sp", False):
                raise ValueError("KV-cache decoding needs parallel.sequence_parallel=false")
            position_ids = kv_cache.begin(h.shape[0], seq, device)
        if position_ids is None:
            if seq is None:
                raise ValueError("Transformer stage without the embedding needs position_ids or labels for the length")
            position_ids = torch.arange(seq, device=device)
        cos, sin = self.rope(position_ids, h.dtype)
        if not self.cfg.document_mask:  # packed documents attend across EOD, as in Crystal/Megatron
            segment_ids = None
        bounds = (cu_seqlens, int(max_seqlen)) if segment_ids is not None and cu_seqlens is not None else None
        if kv_cache is not None:  # decoding: no recomputation
            for name, block in self.layers.items():
                h = block(h, cos, sin, segment_ids, bounds, cp, (kv_cache, name))
            kv_cache.end()
        else:
            blocks = list(self.layers.values())
            for a, z, ckpt in self.recompute:  # model.recompute=full: checkpointed groups of blocks
                h = run_blocks(blocks[a:z], h, (cos, sin, segment_ids, bounds, cp), ckpt and self.training)
        if not self.post_process:
            return h
        if logits_at is not None:
            h = h[torch.arange(h.shape[0], device=h.device), logits_at.to(h.device)][:, None]
        h = self.final_norm(h)
        if self.output_scale != 1.0:
            h = h * self.output_scale
        logits = self.head(h)
        if labels is None:
            return logits
        return self.layers_factory.cross_entropy(logits, labels, impl=self.cfg.kernels)


def serial_layout(cfg: ModelConfig) -> dict[str, tuple[tuple, tuple]]:
    """{name: (shape, true shape)} of the serial model's parameters (= its state dict), padding included
    in `shape`; built on the meta device, so it costs no memory."""
    cfg = cfg.resolve()
    with torch.device("meta"):
        m = Transformer(cfg)
    return {n: (tuple(p.shape), true_shape(p)) for n, p in m.named_parameters()}


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters of the full model at their true sizes (no vocabulary or FFN padding), from the config."""
    cfg = cfg.resolve()
    h, f, v, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size, cfg.head_dim
    qkv = h * (cfg.num_heads + 2 * cfg.num_kv_heads) * d
    attn = qkv + cfg.num_heads * d * h
    mlp = 3 * h * f
    biases = ((cfg.num_heads + 2 * cfg.num_kv_heads) * d + h + 2 * f + h) if cfg.bias else 0
    norms = 2 * h * (1 if cfg.norm == "rmsnorm" else 2)
    per_layer = attn + mlp + biases + norms
    final = h * (1 if cfg.norm == "rmsnorm" else 2)
    emb = v * h * (1 if cfg.tie_embeddings else 2)
    return cfg.num_layers * per_layer + final + emb
