"""The config tree: one dataclass per section (model, parallel, data with phases, optim, train, log),
the model families' trait defaults and the size presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the field."""


def where(origin: str | None, path: str) -> str:
    return f"{origin}: {path}" if origin else path


# --------------------------------------------------------------------------- model

# Family defaults: each trait is its own field, a family only fills the ones left unset.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "crystal": dict(
        norm="layernorm",
        norm_eps=1e-5,
        rotary_fraction=0.25,
        rotary_interleaved=True,
        rotary_base=10000.0,
        bias=True,
        tie_embeddings=True,
        mup=True,
        init_std=0.073,
    ),
    "llama": dict(
        norm="rmsnorm",
        norm_eps=1e-5,
        rotary_fraction=1.0,
        rotary_interleaved=False,
        rotary_base=10000.0,
        bias=False,
        tie_embeddings=False,
        mup=False,
        init_std=0.02,
    ),
}

# Size presets (traits come from the family).
PRESETS: dict[str, dict[str, Any]] = {
    "crystal-7b": dict(
        num_layers=32, hidden_size=4096, num_heads=32, ffn_hidden_size=10922, vocab_size=32032, max_seq_len=2048
    ),
    "crystal-1b": dict(
        num_layers=24, hidden_size=2048, num_heads=16, ffn_hidden_size=5461, vocab_size=32032, max_seq_len=2048
    ),
    "tiny": dict(
        num_layers=4,
        hidden_size=64,
        num_heads=4,
        ffn_hidden_size=172,
        vocab_size=2048,
        max_seq_len=128,
        mup_base_width=64,
    ),
}


@dataclass
class ModelConfig:
    family: str = "crystal"
    preset: str | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None  # None: = num_heads (plain MHA, as Crystal)
    ffn_hidden_size: int | None = None
    vocab_size: int | None = None
    max_seq_len: int | None = None
    norm: str | None = None  # layernorm | rmsnorm
    norm_eps: float | None = None
    rotary_fraction: float | None = None  # share of each head's dims that is rotated
    rotary_interleaved: bool | None = None  # GPT-J pairs (0,1),(2,3)... vs LLaMA rotate-half
    rotary_base: float | None = None
    bias: bool | None = None  # QKV, attention out and all FFN matrices
    tie_embeddings: bool | None = None
    mup: bool | None = None
    mup_base_width: int | None = None  # None: 256 (Crystal); presets may set it
    mup_embeddings_scale: float = 14.6
    mup_output_alpha: float = 2.22
    mup_scale_qk_dot_by_d: bool = True
    init_std: float | None = None  # embeddings; hidden = init_std*sqrt(m) under muP
    recompute: bool | str = "none"  # none | selective | full (true/false read as full/none)
    recompute_method: str | None = None  # full only: uniform (default) | block (Megatron's meanings)
    recompute_num_layers: int | None = None  # full only: layers per group (uniform) / per stage (block); None: 1 / all
    compile: bool = False  # torch.compile each block (falls back to eager with one log line)
    kernels: str = "auto"  # auto | triton | torch
    attention_backend: str = "auto"  # auto | flash | fa2 | fa3 | fa4 | sdpa | math
    use_apex_norm: bool = False
    document_mask: bool = False  # attention does not cross EOD boundaries
    grad_accum_fusion: str = "auto"  # auto | on | off | torch | cuda (weight grad GEMM into fp32 main_grad)

    def resolve(self) -> ResolvedModelConfig:
        """Fill unset fields from the preset (sizes) and the family (traits): a read-only copy. Done
        once, when the config is loaded; a config that is already resolved is returned as it is."""
        if isinstance(self, ResolvedModelConfig):
            return self
        out = dataclasses.replace(self)
        if out.family not in FAMILY_DEFAULTS:
            raise ConfigError(f"model.family: expected one of {sorted(FAMILY_DEFAULTS)}, got {out.family!r}")
        if out.preset is not None and out.preset not in PRESETS:
            raise ConfigError(f"model.preset: expected one of {sorted(PRESETS)}, got {out.preset!r}")
        fill = dict(FAMILY_DEFAULTS[out.family])
        if out.preset:
            fill.update(PRESETS[out.preset])
        for k, v in fill.items():
            if getattr(out, k) is None:
                setattr(out, k, v)
        if out.num_kv_heads is None:
            out.num_kv_heads = out.num_heads
        if out.mup_base_width is None:
            out.mup_base_width = 256
        if isinstance(out.recompute, bool):  # the old boolean field
            out.recompute = "full" if out.recompute else "none"
        if out.recompute == "full":
            out.recompute_method = out.recompute_method or "uniform"
        if out.ffn_hidden_size is None and out.hidden_size is not None:
            out.ffn_hidden_size = int(8 * out.hidden_size / 3)
        for k in ("num_layers", "hidden_size", "num_heads", "vocab_size", "max_seq_len"):
            if getattr(out, k) is None:
                raise ConfigError(f"model.{k}: not set (give it, or a model.preset from {sorted(PRESETS)})")
        return ResolvedModelConfig(**{f.name: getattr(out, f.name) for f in dataclasses.fields(out)})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def width_mult(self) -> float:
        """muP width scale m = base_width / width (1.0 without muP)."""
        return self.mup_base_width / self.hidden_size if self.mup else 1.0


@dataclass
class ResolvedModelConfig(ModelConfig):
    """A `ModelConfig` with every field filled in (`ModelConfig.resolve`), read-only: what the model,
    the engine and the checkpoints read. Change a field with `dataclasses.replace(cfg, field=value)`."""

    def __post_init__(self):
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise dataclasses.FrozenInstanceError(
                f"model.{name}: a resolved model config is read-only (use dataclasses.replace)"
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        raise dataclasses.FrozenInstanceError(f"model.{name}: a resolved model config is read-only")


# --------------------------------------------------------------------------- parallel


@dataclass
class ParallelConfig:
    tp: int = 1
    cp: int = 1  # context parallel: each sequence split over cp ranks (ring attention)
    pp: int = 1
    vpp: int = 1  # virtual stages per pipeline rank (interleaved 1F1B when > 1)
    dp: int | None = None  # None: world_size // (tp*cp*pp)
    sequence_parallel: bool = False
    distributed_optimizer: bool = False
    order: str = "tp-dp-pp"  # rank order, fastest-varying first (Megatron's default)
    bucket_size_mb: float = 25.0
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True  # ZeRO-1: each bucket's all-gather waited for by the next forward
    overlap_p2p_comm: bool = True  # pipeline transfers posted early, waited for just before use
    backend: str = "auto"  # auto (nccl on cuda, else gloo) | gloo | nccl | cuda:gloo (test-only, docs/config.md)
    timeout_s: float = 1800.0  # a collective waiting longer than this fails (process-group timeout)


# --------------------------------------------------------------------------- data


@dataclass
class SourceConfig:
    """A named list of indexed-file prefixes (`PREFIX.bin/.idx`), optional per-file weights."""

    prefixes: list[str] = field(default_factory=list)
    weights: list[float] | None = None
    kind: str = "nl"  # nl | code: eval scores FIM/completion on code sources; training FIM is `fim`
    language: str | None = None
    optional: bool = False  # no tokens: dropped from the phases' blends instead of an error
    fim: bool = False  # opts in to FIM: a phase's fim_rate applies to this source (docs/data-sampling.md)


@dataclass
class ReplayConfig:
    """A range of an earlier phase's samples of one source, replayed token for token (FIM included)."""

    phase: str = ""  # name of the earlier phase
    source: str = ""  # the source as it appears in that phase's blend
    start: float = 0.0  # fraction of that phase's samples of the source where the range starts
    end: float = 1.0  # ... and ends (exclusive)


@dataclass
class BlendEntry:
    """A blend entry written as a mapping: weight plus what applies to this source in this phase."""

    weight: float = 0.0
    fim_rate: float | None = None  # None: the phase's fim_rate if the source opts in (fim: true), else 0
    fim_spm_rate: float | None = None  # None: the phase's fim_spm_rate
    replay: ReplayConfig | None = None  # the entry replays an earlier phase; its key is then a free name


@dataclass
class PhaseConfig:
    name: str = "phase"
    tokens: int | None = None  # length in tokens, or
    steps: int | None = None  # length in optimizer steps
    blend: dict[str, BlendEntry | float] = field(default_factory=dict)  # {source: weight or BlendEntry}
    fim_rate: float = 0.0
    fim_spm_rate: float = 0.5
    # LR schedule of this phase (base LR; muP groups scale it)
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 0
    decay_steps: int | None = None  # None: the phase's length; may exceed it (Crystal phase 1)
    decay_style: str = "linear"  # linear | cosine | constant
    save_interval: int | None = None  # checkpoint every N steps of this phase (None: train.save_interval)
    valid_sources: list[str] | None = None  # sources validated during this phase (None: every held-out set)

    def entries(self) -> dict[str, BlendEntry]:
        """The blend with every entry as a BlendEntry (a plain number is its weight)."""
        return {k: v if isinstance(v, BlendEntry) else BlendEntry(weight=float(v)) for k, v in self.blend.items()}


@dataclass
class DataConfig:
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    phases: list[PhaseConfig] = field(default_factory=list)
    tokenizer_type: str = "HuggingFaceTokenizer"  # | SentencePieceTokenizer
    tokenizer_model: str | None = None
    seq_length: int = 2048
    seed: int = 1234
    valid_fraction: float = 0.0  # document-level held-out share per source
    max_epochs: int = 1000  # a source needing more epochs than this is an error
    surplus: float = 0.005  # extra samples built per source (megatron-core's margin)
    cache_dir: str | None = None  # None: {train.out_dir}/index_cache
    num_workers: int = 0
    pin_memory: bool = True
    backend: str = "torch"  # torch | dali
    eod_mask_loss: bool = False


# --------------------------------------------------------------------------- optim / train / log


@dataclass
class OptimConfig:
    name: str = "adamw"
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-9
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    loss_normalization: str = "tokens"  # tokens: / unmasked tokens | fixed: / (global batch x seq), Crystal's
    impl: str = "auto"  # auto | torch | cuda (fused AdamW kernel over the flat buffers)


@dataclass
class TrainConfig:
    micro_batch_size: int = 1
    global_batch_size: int = 8
    max_steps: int | None = None  # None: the sum of the phases' lengths
    precision: str = "fp32"  # fp32 | bf16 | fp64 (verification)
    seed: int = 1234
    out_dir: str = "runs/default"
    save_interval: int = 0  # 0: only at the end
    log_interval: int = 1
    eval_interval: int = 0
    eval_iters: int = 1
    device: str = "auto"  # auto | cpu | cuda | meta (shapes only: `megacrystal rehearse`)
    max_skipped_steps: int = 5  # consecutive non-finite steps (skipped updates) before the run stops
    step_timeout_s: float | None = None  # watchdog: a longer step fails every rank (0: off; None: 600 s multi-rank)
    # checkpoints (docs/checkpoints.md)
    resume: str = "auto"  # auto: newest intact checkpoint | step_00001200 | a checkpoint path
    keep_checkpoints: int = 0  # keep the newest N complete checkpoints (0: all)
    keep_every: int = 0  # also save and keep every checkpoint whose step is a multiple of this (global steps)
    async_save: bool = True  # write checkpoints in the background while training continues
    init_from: str | None = None  # new run from a DCP checkpoint, a consolidated model/ or an HF directory
    init_optimizer: bool = True  # with init_from a DCP checkpoint: also its Adam moments and step
    save_consolidated: bool = False  # at the end of a run also write out_dir/model/ (safetensors)


@dataclass
class LogConfig:
    tensorboard: bool = True
    level: str = "INFO"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source_file: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source_file", None)
        return d
