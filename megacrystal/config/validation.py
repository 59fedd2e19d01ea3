"""Every rule a config must meet that can be checked without a process group (and, given the world
size, the grid rules). Each failure is one `ConfigError` line naming the field."""

from __future__ import annotations

import os
import re
from typing import Any

from .schema import Config, ConfigError, where


def _check(cond: bool, cfg: Config, msg: str) -> None:
    if not cond:
        raise ConfigError(where(cfg.source_file, msg))


def _choice(cfg: Config, path: str, value: Any, choices) -> None:
    _check(value in choices, cfg, f"{path}: expected one of {sorted(choices)}, got {value!r}")


def validate_config(cfg: Config, world_size: int | None = None) -> None:
    """Every rule that can be checked without a process group. `world_size` adds the grid rules.
    Reads `cfg` only (an unresolved model config is checked as it would resolve)."""
    m, par, d, t, o = cfg.model.resolve(), cfg.parallel, cfg.data, cfg.train, cfg.optim
    for k in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size", "max_seq_len"):
        _check(getattr(m, k) > 0, cfg, f"model.{k}: expected a positive integer, got {getattr(m, k)}")
    _check(
        m.hidden_size % m.num_heads == 0,
        cfg,
        f"model.hidden_size: {m.hidden_size} is not divisible by model.num_heads={m.num_heads}",
    )
    _check(
        m.num_heads % m.num_kv_heads == 0,
        cfg,
        f"model.num_kv_heads: {m.num_kv_heads} must divide model.num_heads={m.num_heads}",
    )
    _choice(cfg, "model.norm", m.norm, {"layernorm", "rmsnorm"})
    _check(0.0 <= m.rotary_fraction <= 1.0, cfg, f"model.rotary_fraction: expected 0..1, got {m.rotary_fraction}")
    rot = int(m.head_dim * m.rotary_fraction)
    _check(
        rot % 2 == 0,
        cfg,
        f"model.rotary_fraction: {m.rotary_fraction} of head_dim {m.head_dim} "
        f"gives {rot} rotated dims; expected an even number",
    )
    _choice(cfg, "model.kernels", m.kernels, {"auto", "triton", "torch"})
    _choice(cfg, "model.attention_backend", m.attention_backend, {"auto", "flash", "fa2", "fa3", "fa4", "sdpa", "math"})
    _choice(cfg, "model.grad_accum_fusion", m.grad_accum_fusion, {"auto", "on", "off", "torch", "cuda"})
    _choice(cfg, "optim.impl", o.impl, {"auto", "torch", "cuda"})
    _validate_recompute(cfg, m)

    for k in ("tp", "cp", "pp", "vpp"):
        _check(getattr(par, k) >= 1, cfg, f"parallel.{k}: expected >= 1, got {getattr(par, k)}")
    _choice(cfg, "parallel.order", par.order, {"tp-dp-pp", "tp-pp-dp"})
    _choice(cfg, "parallel.backend", par.backend, {"auto", "gloo", "nccl", "cuda:gloo"})
    _check(
        m.num_heads % par.tp == 0, cfg, f"parallel.tp: model.num_heads={m.num_heads} is not divisible by tp={par.tp}"
    )
    _check(
        m.num_kv_heads % par.tp == 0,
        cfg,
        f"parallel.tp: model.num_kv_heads={m.num_kv_heads} is not divisible by tp={par.tp}",
    )
    _check(
        m.num_layers % (par.pp * par.vpp) == 0,
        cfg,
        f"parallel.pp: model.num_layers={m.num_layers} is not divisible by pp*vpp={par.pp * par.vpp}",
    )
    _check(not (par.sequence_parallel and par.tp == 1), cfg, "parallel.sequence_parallel: needs parallel.tp > 1")
    _check(not (par.vpp > 1 and par.pp == 1), cfg, "parallel.vpp: needs parallel.pp > 1")
    _check(par.dp is None or par.dp >= 1, cfg, f"parallel.dp: expected >= 1 (or unset), got {par.dp}")
    _check(par.bucket_size_mb > 0, cfg, f"parallel.bucket_size_mb: expected > 0, got {par.bucket_size_mb}")
    _check(
        not par.sequence_parallel or d.seq_length % par.tp == 0,
        cfg,
        f"parallel.sequence_parallel: data.seq_length={d.seq_length} is not divisible by tp={par.tp}",
    )

    _validate_context_parallel(cfg, m)

    _choice(cfg, "train.precision", t.precision, {"fp32", "bf16", "fp64"})
    _choice(cfg, "train.device", t.device, {"auto", "cpu", "cuda", "meta"})
    _check(t.micro_batch_size >= 1, cfg, f"train.micro_batch_size: expected >= 1, got {t.micro_batch_size}")
    _check(t.global_batch_size >= 1, cfg, f"train.global_batch_size: expected >= 1, got {t.global_batch_size}")
    _check(t.log_interval >= 1, cfg, f"train.log_interval: expected >= 1, got {t.log_interval}")
    _check(t.save_interval >= 0, cfg, f"train.save_interval: expected >= 0, got {t.save_interval}")
    _choice(cfg, "optim.name", o.name, {"adamw"})
    _check(
        not (o.impl == "cuda" and t.precision == "fp64"),
        cfg,
        "optim.impl: cuda with train.precision=fp64: the fused CUDA AdamW keeps fp32 state "
        "(use optim.impl=torch or auto for fp64)",
    )
    _choice(cfg, "optim.loss_normalization", o.loss_normalization, {"tokens", "fixed"})
    _choice(cfg, "log.level", cfg.log.level, {"DEBUG", "INFO", "WARNING", "ERROR"})
    _check(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, cfg, "optim.beta1/beta2: expected values in [0, 1)")

    _check(d.seq_length >= 2, cfg, f"data.seq_length: expected >= 2, got {d.seq_length}")
    _check(
        d.seq_length <= m.max_seq_len, cfg, f"data.seq_length: {d.seq_length} exceeds model.max_seq_len={m.max_seq_len}"
    )
    _choice(cfg, "data.tokenizer_type", d.tokenizer_type, {"HuggingFaceTokenizer", "SentencePieceTokenizer"})
    _choice(cfg, "data.backend", d.backend, {"torch", "dali"})
    _check(0.0 <= d.valid_fraction < 1.0, cfg, f"data.valid_fraction: expected 0..1, got {d.valid_fraction}")
    _check(d.max_epochs >= 1, cfg, f"data.max_epochs: expected >= 1, got {d.max_epochs}")
    _check(0.0 <= d.surplus < 1.0, cfg, f"data.surplus: expected 0..1, got {d.surplus}")
    _check(d.num_workers >= 0, cfg, f"data.num_workers: expected >= 0, got {d.num_workers}")
    for name, src in d.sources.items():
        _choice(cfg, f"data.sources.{name}.kind", src.kind, {"nl", "code"})
        _check(len(src.prefixes) > 0, cfg, f"data.sources.{name}.prefixes: expected at least one indexed-file prefix")
        if src.weights is not None:
            _check(
                len(src.weights) == len(src.prefixes),
                cfg,
                f"data.sources.{name}.weights: {len(src.weights)} weights for {len(src.prefixes)} prefixes",
            )
            _check(
                all(w >= 0 for w in src.weights) and sum(src.weights) > 0,
                cfg,
                f"data.sources.{name}.weights: expected non-negative weights with a positive sum",
            )
    names = set()
    for i, ph in enumerate(d.phases):
        where = f"data.phases[{i}]"
        _check(ph.name not in names, cfg, f"{where}.name: duplicate phase name {ph.name!r}")
        names.add(ph.name)
        _check((ph.tokens is None) != (ph.steps is None), cfg, f"{where}: give exactly one of tokens or steps")
        _check((ph.tokens or ph.steps or 0) > 0, cfg, f"{where}: length must be positive")
        _check(len(ph.blend) > 0, cfg, f"{where}.blend: expected at least one source")
        _validate_blend(cfg, i)
        _check(0.0 <= ph.fim_rate <= 1.0, cfg, f"{where}.fim_rate: expected 0..1, got {ph.fim_rate}")
        _check(0.0 <= ph.fim_spm_rate <= 1.0, cfg, f"{where}.fim_spm_rate: expected 0..1, got {ph.fim_spm_rate}")
        _choice(cfg, f"{where}.decay_style", ph.decay_style, {"linear", "cosine", "constant"})
        _check(ph.lr >= 0 and ph.min_lr >= 0, cfg, f"{where}.lr/min_lr: expected non-negative")
        _check(ph.warmup_steps >= 0, cfg, f"{where}.warmup_steps: expected >= 0")

    _validate_run_safety(cfg)
    _validate_checkpointing(cfg)
    if world_size is not None:
        validate_world(cfg, world_size)


def _validate_recompute(cfg: Config, m) -> None:
    _choice(cfg, "model.recompute", m.recompute, {"none", "selective", "full"})
    if m.recompute != "full":
        _check(
            m.recompute_method is None and m.recompute_num_layers is None,
            cfg,
            f"model.recompute_method/recompute_num_layers: apply to model.recompute=full only (it is {m.recompute})",
        )
        return
    _choice(cfg, "model.recompute_method", m.recompute_method, {"uniform", "block"})
    n = m.recompute_num_layers
    _check(n is None or n >= 1, cfg, f"model.recompute_num_layers: expected >= 1 (or unset), got {n}")


def _validate_run_safety(cfg: Config) -> None:
    """Step counts, intervals, optimizer constants, the skip limit and the timeouts."""
    t, o, par = cfg.train, cfg.optim, cfg.parallel
    _check(
        t.max_steps is None or t.max_steps >= 0, cfg, f"train.max_steps: expected >= 0 (or unset), got {t.max_steps}"
    )
    _check(t.eval_interval >= 0, cfg, f"train.eval_interval: expected >= 0 (0: no evaluation), got {t.eval_interval}")
    _check(
        t.eval_interval == 0 or t.eval_iters >= 1,
        cfg,
        f"train.eval_iters: expected >= 1 when train.eval_interval is set, got {t.eval_iters}",
    )
    _check(o.eps >= 0, cfg, f"optim.eps: expected >= 0, got {o.eps}")
    _check(o.weight_decay >= 0, cfg, f"optim.weight_decay: expected >= 0, got {o.weight_decay}")
    _check(o.clip_grad >= 0, cfg, f"optim.clip_grad: expected >= 0 (0: no clipping), got {o.clip_grad}")
    _check(t.max_skipped_steps >= 1, cfg, f"train.max_skipped_steps: expected >= 1, got {t.max_skipped_steps}")
    _check(
        t.step_timeout_s is None or t.step_timeout_s >= 0,
        cfg,
        f"train.step_timeout_s: expected >= 0 (0: no watchdog), got {t.step_timeout_s}",
    )
    _check(par.timeout_s > 0, cfg, f"parallel.timeout_s: expected > 0 seconds, got {par.timeout_s}")


# attention backends the ring can run on: their kernels return the log-sum-exp and take one back in
# the backward (math; SDPA's CPU flash, CUDA flash and memory-efficient aten ops)
CP_BACKENDS = ("auto", "sdpa", "math")


def _validate_context_parallel(cfg: Config, m) -> None:
    par, d = cfg.parallel, cfg.data
    if par.cp == 1:
        return
    chunks = 2 * par.cp * (par.tp if par.sequence_parallel else 1)
    what = f"2*cp*tp = {chunks} (sequence parallel)" if par.sequence_parallel else f"2*cp = {chunks}"
    _check(
        d.seq_length % chunks == 0,
        cfg,
        f"parallel.cp: data.seq_length={d.seq_length} is not divisible by {what} (each cp rank holds 2 equal chunks)",
    )
    _check(
        m.attention_backend in CP_BACKENDS,
        cfg,
        f"parallel.cp: model.attention_backend={m.attention_backend} cannot run ring attention (its kernel takes "
        f"no outside log-sum-exp in the backward); use one of {list(CP_BACKENDS)} (auto/sdpa: SDPA's flash or "
        f"memory-efficient kernels on CUDA)",
    )


def _validate_blend(cfg: Config, i: int) -> None:
    """Phase i's blend entries (sources, per-source FIM, replays), its save interval and validation sources."""
    d = cfg.data
    ph = d.phases[i]
    where = f"data.phases[{i}]"
    entries = ph.entries()
    for k, e in entries.items():
        at = f"{where}.blend.{k}"
        _check(e.weight >= 0, cfg, f"{at}: expected a non-negative weight, got {e.weight}")
        for f in ("fim_rate", "fim_spm_rate"):
            v = getattr(e, f)
            _check(v is None or 0.0 <= v <= 1.0, cfg, f"{at}.{f}: expected 0..1, got {v}")
        if e.replay is None:
            _check(k in d.sources, cfg, f"{where}.blend: unknown source {k!r} (sources: {sorted(d.sources)})")
            continue
        r = e.replay
        _check(k not in d.sources, cfg, f"{at}: a replay entry needs a name of its own, not the source name {k!r}")
        _check(
            e.fim_rate is None and e.fim_spm_rate is None,
            cfg,
            f"{at}: a replay entry takes the FIM draws of the phase it replays; remove its fim_rate/fim_spm_rate",
        )
        earlier = {p.name: j for j, p in enumerate(d.phases[:i])}
        _check(
            r.phase in earlier, cfg, f"{at}.replay.phase: expected an earlier phase {sorted(earlier)}, got {r.phase!r}"
        )
        src = d.phases[earlier[r.phase]].entries().get(r.source)
        _check(
            src is not None and src.replay is None and src.weight > 0,
            cfg,
            f"{at}.replay.source: {r.source!r} is not a source with weight > 0 in phase {r.phase!r}",
        )
        _check(
            0.0 <= r.start < r.end <= 1.0, cfg, f"{at}.replay: expected 0 <= start < end <= 1, got {r.start}, {r.end}"
        )
    _check(sum(e.weight for e in entries.values()) > 0, cfg, f"{where}.blend: weights sum to 0")
    if ph.fim_rate > 0:
        _check(
            any(e.replay is None and e.fim_rate is None and d.sources[k].fim for k, e in entries.items()),
            cfg,
            f"{where}.fim_rate: {ph.fim_rate} but no source of its blend opts in to FIM; the phase's fim_rate "
            f"applies only to sources with `fim: true` and no fim_rate of their own in the blend (`kind: code` "
            f"alone no longer means FIM)",
        )
    _check(
        ph.save_interval is None or ph.save_interval >= 0,
        cfg,
        f"{where}.save_interval: expected >= 0, got {ph.save_interval}",
    )
    for s in ph.valid_sources or []:
        _check(s in d.sources, cfg, f"{where}.valid_sources: unknown source {s!r} (sources: {sorted(d.sources)})")
    _check(
        not ph.valid_sources or d.valid_fraction > 0,
        cfg,
        f"{where}.valid_sources: needs held-out documents (data.valid_fraction > 0)",
    )


def _validate_checkpointing(cfg: Config) -> None:
    t = cfg.train
    _check(
        t.resume == "auto" or bool(re.fullmatch(r"step_\d{8,}", t.resume)) or os.sep in t.resume,
        cfg,
        f"train.resume: expected auto, a checkpoint name like step_00001200, or a checkpoint path; got {t.resume!r}",
    )
    _check(t.keep_checkpoints >= 0, cfg, f"train.keep_checkpoints: expected >= 0, got {t.keep_checkpoints}")
    _check(t.keep_every >= 0, cfg, f"train.keep_every: expected >= 0, got {t.keep_every}")
    if t.init_from is not None:
        _check(os.path.isdir(t.init_from), cfg, f"train.init_from: {t.init_from} is not a directory")


def validate_world(cfg: Config, world_size: int) -> int:
    """Grid rules against the launched world; returns dp."""
    par, t = cfg.parallel, cfg.train
    mp = par.tp * par.cp * par.pp
    what = (
        f"tp*cp*pp={mp} (tp={par.tp}, cp={par.cp}, pp={par.pp})"
        if par.cp > 1
        else f"tp*pp={mp} (tp={par.tp}, pp={par.pp})"
    )
    _check(world_size % mp == 0, cfg, f"parallel: world size {world_size} is not divisible by {what}")
    dp = world_size // mp
    if par.dp is not None:
        _check(par.dp == dp, cfg, f"parallel.dp: {par.dp} but world size {world_size} / {what.split(' ')[0]} = {dp}")
    _check(
        t.global_batch_size % (t.micro_batch_size * dp) == 0,
        cfg,
        f"train.global_batch_size: {t.global_batch_size} is not divisible by "
        f"micro_batch_size*dp = {t.micro_batch_size}*{dp}",
    )
    if par.vpp > 1:
        nmb = t.global_batch_size // (t.micro_batch_size * dp)
        _check(
            nmb % par.pp == 0,
            cfg,
            f"parallel.vpp: interleaved 1F1B needs the number of micro-batches ({nmb}) divisible by pp={par.pp}",
        )
    return dp
