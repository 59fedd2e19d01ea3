"""What the planner costs: the model's shape, one layout of it, and the engine features a run has.

`ModelShape` comes from a config (`from_config`) or is written out for a published system (the
validation rows' GPT models). `Layout` is one candidate grid. `Features` names every overlap and
implementation choice that changes a step's time; its defaults are what this engine does today, so
a feature another branch adds is one switch here (read from the config when the field exists)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..model.padding import pad_to

RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int  # the true inner size; padded to a multiple of ffn_multiple * tp when executed
    vocab: int
    mlp: str = "swiglu"  # swiglu (up, gate, down) | gelu (up, down)
    bias: bool = True
    tied: bool = True
    dropout: float = 0.0
    rotary: bool = True
    learned_positions: bool = False
    ffn_multiple: int = 64
    vocab_multiple: int = 64

    @classmethod
    def from_config(cls, m) -> ModelShape:
        m = m.resolve()
        return cls(
            layers=m.num_layers,
            hidden=m.hidden_size,
            heads=m.num_heads,
            kv_heads=m.num_kv_heads,
            head_dim=m.head_dim,
            ffn=m.ffn_hidden_size,
            vocab=m.vocab_size,
            bias=bool(m.bias),
            tied=bool(m.tie_embeddings),
            rotary=m.rotary_fraction > 0,
        )

    def ffn_padded(self, tp: int) -> int:
        return pad_to(self.ffn, self.ffn_multiple * tp)

    def vocab_padded(self, tp: int) -> int:
        return pad_to(self.vocab, self.vocab_multiple * tp)

    def layer_params(self, tp: int = 1) -> int:
        """Parameters of one transformer layer as executed (padded FFN), unsharded."""
        h, d = self.hidden, self.head_dim
        f = self.ffn_padded(tp)
        qkv = h * (self.heads + 2 * self.kv_heads) * d
        proj = self.heads * d * h
        mats = 3 if self.mlp == "swiglu" else 2
        b = (self.heads + 2 * self.kv_heads) * d + h + (mats - 1) * f + h if self.bias else 0
        return qkv + proj + mats * h * f + b + 4 * h  # two norms with weight and bias

    def total_params(self, tp: int = 1) -> int:
        v = self.vocab_padded(tp)
        emb = v * self.hidden * (1 if self.tied else 2)
        return self.layers * self.layer_params(tp) + emb + 2 * self.hidden


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    dp: int = 1
    sp: bool = False
    dist_opt: bool = False
    mbs: int = 1
    recompute: str = "none"
    order: str = "tp-dp-pp"
    cp: int = 1  # context parallel: each sequence split over cp ranks (ring attention)

    @property
    def gpus(self) -> int:
        return self.tp * self.cp * self.pp * self.dp

    def label(self) -> str:
        """Short name, also what `--explain` takes: tp2.pp1.vpp1.dp128.mbs2.sp.zero.rc-none (tp2.cp4.pp1...
        with context parallelism)"""
        cp = f".cp{self.cp}" if self.cp > 1 else ""
        s = f"tp{self.tp}{cp}.pp{self.pp}.vpp{self.vpp}.dp{self.dp}.mbs{self.mbs}"
        s += ".sp" if self.sp else ""
        s += ".zero" if self.dist_opt else ""
        return s + f".rc-{self.recompute}"


@dataclass(frozen=True)
class Features:
    """Overlaps and implementations. Defaults: this engine today (docs/planner.md, "Overlap")."""

    overlap_grad_reduce: bool = True  # dp buckets reduced behind the backward (parallel/grad_buffers.py)
    overlap_param_gather: bool = True  # ZeRO-1 all-gather behind the next forward (parallel/param_gather.py)
    overlap_p2p: bool = True  # pipeline transfers posted early, waited at use (parallel/p2p.py)
    tp_overlap_wgrad: bool = False  # tp input-grad all-reduce behind the weight-grad GEMM (Megatron 2022)
    p2p_scatter_gather: bool = False  # pp transfers split over tp, re-gathered on NVLink (Megatron 2021)
    attention: str = "flash"  # flash | sdpa: fused kernels; unfused: s x s scores in memory (Megatron 2021)
    grad_accum_fused: bool = True  # weight-grad GEMM accumulates into fp32 main_grad (model.grad_accum_fusion)
    optimizer: str = "fused"  # fused: one CUDA AdamW pass; foreach: torch _foreach ops (optim.impl=torch)
    grad_bytes: int = 4  # bytes per gradient element in the dp reduction (fp32 main grads)
    param_bytes: int = 2  # bf16 weights; 4 for fp32, 8 for fp64
    master_bytes: int = 4  # fp32 master copy (0 when the weights are fp32 already)
    precision: str = "bf16"
    bucket_mb: float = 25.0

    @classmethod
    def from_config(cls, cfg, device: str = "cuda") -> Features:
        """The engine's behaviour for `cfg` on a `device` ("cuda" or "cpu")."""
        par, m, t, o = cfg.parallel, cfg.model, cfg.train, cfg.optim
        prec = t.precision
        pbytes = {"bf16": 2, "fp32": 4, "fp64": 8}[prec]
        gpu = device == "cuda"
        fused_opt = o.impl == "cuda" or (o.impl == "auto" and gpu)
        accum = m.grad_accum_fusion in ("on", "torch", "cuda") or (m.grad_accum_fusion == "auto" and gpu)
        backend = m.attention_backend if m.attention_backend in ("flash", "sdpa") else "flash"
        if m.attention_backend == "math":
            backend = "unfused"
        return cls(
            overlap_grad_reduce=bool(par.overlap_grad_reduce) and gpu,  # gloo runs the buckets synchronously
            overlap_param_gather=bool(par.overlap_param_gather),
            overlap_p2p=bool(par.overlap_p2p_comm),
            attention=backend,
            grad_accum_fused=accum and prec == "bf16",
            optimizer="fused" if fused_opt else "foreach",
            grad_bytes=max(4, pbytes),
            param_bytes=pbytes,
            master_bytes=4 if prec == "bf16" else 0,
            precision=prec,
            bucket_mb=float(par.bucket_size_mb),
        )

    def but(self, **kw) -> Features:
        return replace(self, **kw)


def recompute_of(model_cfg) -> str:
    """`model.recompute` as one of RECOMPUTE: today a bool (full block checkpointing); issue 21's
    string form (none | selective | full) is read as it is."""
    r = model_cfg.recompute
    if isinstance(r, str):
        return r
    return "full" if r else "none"


@dataclass(frozen=True)
class LayerShape:
    """The cache key of one distinct layer cost: everything a layer's cost depends on."""

    model: ModelShape
    tp: int
    sp: bool
    recompute: str
    mbs: int
    seq: int
    features: Features
    cp: int = 1

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch this rank holds (its 2 of the sequence's 2·cp chunks)."""
        return self.mbs * self.seq // self.cp
