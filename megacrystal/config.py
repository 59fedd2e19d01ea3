"""One typed dataclass tree for a run: model, parallel, data (phases), optim, train, log.

Loaded from YAML, then `dotted.key=value` overrides, then validated. Every error is a
`ConfigError` whose message names the file and the field and says what was expected.
Nothing here touches torch.distributed: a config is validated before any process group exists.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the field."""


# --------------------------------------------------------------------------- model

# Family defaults: each trait is its own field, a family only fills the ones left unset.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "crystal": dict(norm="layernorm", norm_eps=1e-5, rotary_fraction=0.25, rotary_interleaved=True,
                    rotary_base=10000.0, bias=True, tie_embeddings=True, mup=True, init_std=0.073),
    "llama": dict(norm="rmsnorm", norm_eps=1e-5, rotary_fraction=1.0, rotary_interleaved=False,
                  rotary_base=10000.0, bias=False, tie_embeddings=False, mup=False, init_std=0.02),
}

# Size presets (traits come from the family).
PRESETS: dict[str, dict[str, Any]] = {
    "crystal-7b": dict(num_layers=32, hidden_size=4096, num_heads=32, ffn_hidden_size=10922,
                       vocab_size=32032, max_seq_len=2048),
    "crystal-1b": dict(num_layers=24, hidden_size=2048, num_heads=16, ffn_hidden_size=5461,
                       vocab_size=32032, max_seq_len=2048),
    "tiny": dict(num_layers=4, hidden_size=64, num_heads=4, ffn_hidden_size=172,
                 vocab_size=2048, max_seq_len=128, mup_base_width=64),
}


@dataclass
class ModelConfig:
    family: str = "crystal"
    preset: Optional[str] = None
    num_layers: Optional[int] = None
    hidden_size: Optional[int] = None
    num_heads: Optional[int] = None
    num_kv_heads: Optional[int] = None          # None: = num_heads (plain MHA, as Crystal)
    ffn_hidden_size: Optional[int] = None
    vocab_size: Optional[int] = None
    max_seq_len: Optional[int] = None
    norm: Optional[str] = None                  # layernorm | rmsnorm
    norm_eps: Optional[float] = None
    rotary_fraction: Optional[float] = None     # share of each head's dims that is rotated
    rotary_interleaved: Optional[bool] = None   # GPT-J pairs (0,1),(2,3)... vs LLaMA rotate-half
    rotary_base: Optional[float] = None
    bias: Optional[bool] = None                 # QKV, attention out and all FFN matrices
    tie_embeddings: Optional[bool] = None
    mup: Optional[bool] = None
    mup_base_width: Optional[int] = None        # None: 256 (Crystal); presets may set it
    mup_embeddings_scale: float = 14.6
    mup_output_alpha: float = 2.22
    mup_scale_qk_dot_by_d: bool = True
    init_std: Optional[float] = None            # embeddings; hidden = init_std*sqrt(m) under muP
    recompute: bool = False                     # activation checkpointing of each block
    kernels: str = "auto"                       # auto | triton | torch
    attention_backend: str = "auto"             # auto | flash | sdpa | math
    use_apex_norm: bool = False
    document_mask: bool = False                 # attention does not cross EOD boundaries

    def resolve(self) -> "ModelConfig":
        """Fill unset fields from the preset (sizes) and the family (traits)."""
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
        if out.ffn_hidden_size is None and out.hidden_size is not None:
            out.ffn_hidden_size = int(8 * out.hidden_size / 3)
        for k in ("num_layers", "hidden_size", "num_heads", "vocab_size", "max_seq_len"):
            if getattr(out, k) is None:
                raise ConfigError(f"model.{k}: not set (give it, or a model.preset from {sorted(PRESETS)})")
        return out

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def width_mult(self) -> float:
        """muP width scale m = base_width / width (1.0 without muP)."""
        return self.mup_base_width / self.hidden_size if self.mup else 1.0


# --------------------------------------------------------------------------- parallel

@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    vpp: int = 1                     # virtual stages per pipeline rank (interleaved 1F1B when > 1)
    dp: Optional[int] = None         # None: world_size // (tp*pp)
    sequence_parallel: bool = False
    distributed_optimizer: bool = False
    order: str = "tp-dp-pp"          # rank order, fastest-varying first (Megatron's default)
    bucket_size_mb: float = 25.0
    overlap_grad_reduce: bool = True
    backend: str = "auto"            # auto (nccl on cuda, else gloo) | gloo | nccl


# --------------------------------------------------------------------------- data

@dataclass
class SourceConfig:
    """A named list of indexed-file prefixes (`PREFIX.bin/.idx`), optional per-file weights."""
    prefixes: list[str] = field(default_factory=list)
    weights: Optional[list[float]] = None
    kind: str = "nl"                 # nl | code  (FIM applies to code sources only)
    language: Optional[str] = None
    optional: bool = False           # no tokens: dropped from the phases' blends instead of an error


@dataclass
class PhaseConfig:
    name: str = "phase"
    tokens: Optional[int] = None     # length in tokens, or
    steps: Optional[int] = None      # length in optimizer steps
    blend: dict[str, float] = field(default_factory=dict)
    fim_rate: float = 0.0
    fim_spm_rate: float = 0.5
    # LR schedule of this phase (base LR; muP groups scale it)
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 0
    decay_steps: Optional[int] = None   # None: the phase's length; may exceed it (Crystal phase 1)
    decay_style: str = "linear"         # linear | cosine | constant


@dataclass
class DataConfig:
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    phases: list[PhaseConfig] = field(default_factory=list)
    tokenizer_type: str = "HuggingFaceTokenizer"   # | SentencePieceTokenizer
    tokenizer_model: Optional[str] = None
    seq_length: int = 2048
    seed: int = 1234
    valid_fraction: float = 0.0      # document-level held-out share per source
    max_epochs: int = 1000           # a source needing more epochs than this is an error
    surplus: float = 0.005           # extra samples built per source (megatron-core's margin)
    cache_dir: Optional[str] = None  # None: {train.out_dir}/index_cache
    num_workers: int = 0
    pin_memory: bool = True
    backend: str = "torch"           # torch | dali
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


@dataclass
class TrainConfig:
    micro_batch_size: int = 1
    global_batch_size: int = 8
    max_steps: Optional[int] = None  # None: the sum of the phases' lengths
    precision: str = "fp32"          # fp32 | bf16
    seed: int = 1234
    out_dir: str = "runs/default"
    save_interval: int = 0           # 0: only at the end
    log_interval: int = 1
    eval_interval: int = 0
    eval_iters: int = 1
    device: str = "auto"             # auto | cpu | cuda


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
    source_file: Optional[str] = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source_file", None)
        return d


# --------------------------------------------------------------------------- building from dicts

def _where(origin: Optional[str], path: str) -> str:
    return f"{origin}: {path}" if origin else path


def _coerce(value: Any, tp: Any, path: str, origin: Optional[str]) -> Any:
    """Check/convert `value` against the annotation `tp`; raise ConfigError naming `path`."""
    o = typing.get_origin(tp)
    args = typing.get_args(tp)
    if o in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path, origin)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else _where(origin, f"{path}: bad value {value!r}"))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(_where(origin, f"{path}: expected a mapping, got {type(value).__name__}"))
        return _build(tp, value, path, origin)
    if o is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(_where(origin, f"{path}: expected a list, got {value!r}"))
        return [_coerce(v, args[0], f"{path}[{i}]", origin) for i, v in enumerate(value)]
    if o is dict:
        if not isinstance(value, dict):
            raise ConfigError(_where(origin, f"{path}: expected a mapping, got {value!r}"))
        return {str(k): _coerce(v, args[1], f"{path}.{k}", origin) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(_where(origin, f"{path}: expected true/false, got {value!r}"))
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not value.is_integer()):
            raise ConfigError(_where(origin, f"{path}: expected an integer, got {value!r}"))
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-6` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(_where(origin, f"{path}: expected a number, got {value!r}")) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(_where(origin, f"{path}: expected a number, got {value!r}"))
        if not math.isfinite(float(value)):
            raise ConfigError(_where(origin, f"{path}: expected a finite number, got {value!r}"))
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(_where(origin, f"{path}: expected a string, got {value!r}"))
        return value
    raise ConfigError(_where(origin, f"{path}: unsupported type {tp}"))


def _build(cls, data: dict, path: str, origin: Optional[str]):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source_file"}
    kwargs = {}
    for k, v in data.items():
        p = f"{path}.{k}" if path else str(k)
        if k not in names:
            raise ConfigError(_where(origin, f"unknown field {p!r} (expected one of {sorted(names)})"))
        kwargs[k] = _coerce(v, hints[k], p, origin)
    return cls(**kwargs)


def from_dict(data: dict, origin: Optional[str] = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(_where(origin, f"expected a mapping at the top level, got {type(data).__name__}"))
    cfg = _build(Config, data, "", origin)
    cfg.source_file = origin
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    import yaml
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set `a.b.c=value` entries on a nested dict (values parsed as YAML scalars)."""
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {text!r}: {'.'.join(parts[:i + 1])} is not an index of a list of {len(node)}")
                node = node[int(part)]
                continue
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, (dict, list)):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[:i + 1])} is not a section")
            node = nxt
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {text!r}: {last!r} is not an index of a list of {len(node)}")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None,
                validate: bool = True) -> Config:
    """Read YAML at `path` (or start from defaults), apply overrides, resolve and validate."""
    import yaml
    data: dict = {}
    origin = None
    if path is not None:
        origin = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        _resolve_relative_paths(data, p.parent)
    data = apply_overrides(data, list(overrides or []))
    cfg = from_dict(data, origin)
    cfg.model = cfg.model.resolve()
    if validate:
        validate_config(cfg)
    return cfg


def _resolve_relative_paths(data: dict, base: Path) -> None:
    """Paths in a config file that start with ./ or ../ are relative to that file."""
    def fix(p):
        return str((base / p).resolve()) if isinstance(p, str) and p.startswith(("./", "../")) else p
    d = data.get("data")
    if not isinstance(d, dict):
        return
    if "tokenizer_model" in d:
        d["tokenizer_model"] = fix(d["tokenizer_model"])
    for src in (d.get("sources") or {}).values():
        if isinstance(src, dict) and isinstance(src.get("prefixes"), list):
            src["prefixes"] = [fix(p) for p in src["prefixes"]]


# --------------------------------------------------------------------------- validation

def _check(cond: bool, cfg: Config, msg: str) -> None:
    if not cond:
        raise ConfigError(_where(cfg.source_file, msg))


def _choice(cfg: Config, path: str, value: Any, choices) -> None:
    _check(value in choices, cfg, f"{path}: expected one of {sorted(choices)}, got {value!r}")


def validate_config(cfg: Config, world_size: Optional[int] = None) -> None:
    """Every rule that can be checked without a process group. `world_size` adds the grid rules."""
    m, par, d, t, o = cfg.model, cfg.parallel, cfg.data, cfg.train, cfg.optim
    if m.num_heads is None:  # not resolved yet
        cfg.model = m = m.resolve()
    for k in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size",
              "vocab_size", "max_seq_len"):
        _check(getattr(m, k) > 0, cfg, f"model.{k}: expected a positive integer, got {getattr(m, k)}")
    _check(m.hidden_size % m.num_heads == 0, cfg,
           f"model.hidden_size: {m.hidden_size} is not divisible by model.num_heads={m.num_heads}")
    _check(m.num_heads % m.num_kv_heads == 0, cfg,
           f"model.num_kv_heads: {m.num_kv_heads} must divide model.num_heads={m.num_heads}")
    _choice(cfg, "model.norm", m.norm, {"layernorm", "rmsnorm"})
    _check(0.0 <= m.rotary_fraction <= 1.0, cfg, f"model.rotary_fraction: expected 0..1, got {m.rotary_fraction}")
    rot = int(m.head_dim * m.rotary_fraction)
    _check(rot % 2 == 0, cfg, f"model.rotary_fraction: {m.rotary_fraction} of head_dim {m.head_dim} "
                              f"gives {rot} rotated dims; expected an even number")
    _choice(cfg, "model.kernels", m.kernels, {"auto", "triton", "torch"})
    _choice(cfg, "model.attention_backend", m.attention_backend, {"auto", "flash", "sdpa", "math"})

    for k in ("tp", "pp", "vpp"):
        _check(getattr(par, k) >= 1, cfg, f"parallel.{k}: expected >= 1, got {getattr(par, k)}")
    _choice(cfg, "parallel.order", par.order, {"tp-dp-pp", "tp-pp-dp"})
    _choice(cfg, "parallel.backend", par.backend, {"auto", "gloo", "nccl"})
    _check(m.num_heads % par.tp == 0, cfg,
           f"parallel.tp: model.num_heads={m.num_heads} is not divisible by tp={par.tp}")
    _check(m.num_kv_heads % par.tp == 0, cfg,
           f"parallel.tp: model.num_kv_heads={m.num_kv_heads} is not divisible by tp={par.tp}")
    _check(m.num_layers % (par.pp * par.vpp) == 0, cfg,
           f"parallel.pp: model.num_layers={m.num_layers} is not divisible by pp*vpp={par.pp * par.vpp}")
    _check(not (par.sequence_parallel and par.tp == 1), cfg,
           "parallel.sequence_parallel: needs parallel.tp > 1")
    _check(not (par.vpp > 1 and par.pp == 1), cfg, "parallel.vpp: needs parallel.pp > 1")
    _check(par.dp is None or par.dp >= 1, cfg, f"parallel.dp: expected >= 1 (or unset), got {par.dp}")
    _check(par.bucket_size_mb > 0, cfg, f"parallel.bucket_size_mb: expected > 0, got {par.bucket_size_mb}")
    _check(not par.sequence_parallel or d.seq_length % par.tp == 0, cfg,
           f"parallel.sequence_parallel: data.seq_length={d.seq_length} is not divisible by tp={par.tp}")

    _choice(cfg, "train.precision", t.precision, {"fp32", "bf16"})
    _choice(cfg, "train.device", t.device, {"auto", "cpu", "cuda"})
    _check(t.micro_batch_size >= 1, cfg, f"train.micro_batch_size: expected >= 1, got {t.micro_batch_size}")
    _check(t.global_batch_size >= 1, cfg, f"train.global_batch_size: expected >= 1, got {t.global_batch_size}")
    _check(t.log_interval >= 1, cfg, f"train.log_interval: expected >= 1, got {t.log_interval}")
    _check(t.save_interval >= 0, cfg, f"train.save_interval: expected >= 0, got {t.save_interval}")
    _choice(cfg, "optim.name", o.name, {"adamw"})
    _choice(cfg, "log.level", cfg.log.level, {"DEBUG", "INFO", "WARNING", "ERROR"})
    _check(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, cfg, "optim.beta1/beta2: expected values in [0, 1)")

    _check(d.seq_length >= 1, cfg, f"data.seq_length: expected >= 1, got {d.seq_length}")
    _check(d.seq_length <= m.max_seq_len, cfg,
           f"data.seq_length: {d.seq_length} exceeds model.max_seq_len={m.max_seq_len}")
    _choice(cfg, "data.tokenizer_type", d.tokenizer_type, {"HuggingFaceTokenizer", "SentencePieceTokenizer"})
    _choice(cfg, "data.backend", d.backend, {"torch", "dali"})
    _check(0.0 <= d.valid_fraction < 1.0, cfg, f"data.valid_fraction: expected 0..1, got {d.valid_fraction}")
    _check(d.max_epochs >= 1, cfg, f"data.max_epochs: expected >= 1, got {d.max_epochs}")
    _check(0.0 <= d.surplus < 1.0, cfg, f"data.surplus: expected 0..1, got {d.surplus}")
    _check(d.num_workers >= 0, cfg, f"data.num_workers: expected >= 0, got {d.num_workers}")
    _check(d.seq_length >= 2, cfg, f"data.seq_length: expected >= 2, got {d.seq_length}")
    for name, src in d.sources.items():
        _choice(cfg, f"data.sources.{name}.kind", src.kind, {"nl", "code"})
        _check(len(src.prefixes) > 0, cfg, f"data.sources.{name}.prefixes: expected at least one indexed-file prefix")
        if src.weights is not None:
            _check(len(src.weights) == len(src.prefixes), cfg,
                   f"data.sources.{name}.weights: {len(src.weights)} weights for {len(src.prefixes)} prefixes")
            _check(all(w >= 0 for w in src.weights) and sum(src.weights) > 0, cfg,
                   f"data.sources.{name}.weights: expected non-negative weights with a positive sum")
    names = set()
    for i, ph in enumerate(d.phases):
        where = f"data.phases[{i}]"
        _check(ph.name not in names, cfg, f"{where}.name: duplicate phase name {ph.name!r}")
        names.add(ph.name)
        _check((ph.tokens is None) != (ph.steps is None), cfg, f"{where}: give exactly one of tokens or steps")
        _check((ph.tokens or ph.steps or 0) > 0, cfg, f"{where}: length must be positive")
        _check(len(ph.blend) > 0, cfg, f"{where}.blend: expected at least one source")
        for s, w in ph.blend.items():
            _check(s in d.sources, cfg, f"{where}.blend: unknown source {s!r} (sources: {sorted(d.sources)})")
            _check(w >= 0, cfg, f"{where}.blend.{s}: expected a non-negative weight, got {w}")
        _check(sum(ph.blend.values()) > 0, cfg, f"{where}.blend: weights sum to 0")
        _check(0.0 <= ph.fim_rate <= 1.0, cfg, f"{where}.fim_rate: expected 0..1, got {ph.fim_rate}")
        _check(0.0 <= ph.fim_spm_rate <= 1.0, cfg, f"{where}.fim_spm_rate: expected 0..1, got {ph.fim_spm_rate}")
        _choice(cfg, f"{where}.decay_style", ph.decay_style, {"linear", "cosine", "constant"})
        _check(ph.lr >= 0 and ph.min_lr >= 0, cfg, f"{where}.lr/min_lr: expected non-negative")
        _check(ph.warmup_steps >= 0, cfg, f"{where}.warmup_steps: expected >= 0")

    if world_size is not None:
        validate_world(cfg, world_size)


def validate_world(cfg: Config, world_size: int) -> int:
    """Grid rules against the launched world; returns dp."""
    par, t = cfg.parallel, cfg.train
    mp = par.tp * par.pp
    _check(world_size % mp == 0, cfg,
           f"parallel: world size {world_size} is not divisible by tp*pp={mp} (tp={par.tp}, pp={par.pp})")
    dp = world_size // mp
    if par.dp is not None:
        _check(par.dp == dp, cfg, f"parallel.dp: {par.dp} but world size {world_size} / (tp*pp={mp}) = {dp}")
    _check(t.global_batch_size % (t.micro_batch_size * dp) == 0, cfg,
           f"train.global_batch_size: {t.global_batch_size} is not divisible by "
           f"micro_batch_size*dp = {t.micro_batch_size}*{dp}")
    if par.vpp > 1:
        nmb = t.global_batch_size // (t.micro_batch_size * dp)
        _check(nmb % par.pp == 0, cfg,
               f"parallel.vpp: interleaved 1F1B needs the number of micro-batches ({nmb}) divisible by pp={par.pp}")
    return dp
