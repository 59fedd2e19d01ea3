"""The data plan: what a run's phases ask of each source, checked before anything is built.

    plan = make_plan(cfg)      # opens the .idx files only; raises ConfigError on any problem

Phase lengths become samples: a phase of `steps` is steps x global_batch_size samples, one of
`tokens` is ceil(tokens / (seq_length x global_batch_size)) steps, so phases end on step
boundaries. A source is sampled by one GPT index per file over all phases' demand (each phase
asks for ceil(ceil(samples x weight) x (1 + surplus)) of it, megatron-core's sizing), so a
source used again in a later phase continues its epoch order. Files within a source are
blended by their `weights`, or by their training tokens when none are given. A phase's blend
entries (entries.py) are its sources, each with the FIM rate that applies to it in this phase, and
replays of earlier phases' ranges, which ask nothing more of their source.

Train/valid split: per file, document-level, deterministic: a fixed-seed permutation of the
documents, the first round(valid_fraction x N) held out (nested as the fraction grows; the same
for every training seed, so changing data.seed never leaks validation documents into training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..config import Config, ConfigError, PhaseConfig
from ..log import get_logger
from .blended import normalize, source_sizes
from .entries import EntryPlan, resolve_entries
from .gpt_dataset import num_epochs
from .indexed import IndexedDataset, IndexedFileError

SPLIT_SEED = 0x5EED_C0DE
log = get_logger("megacrystal.data.plan")


@dataclass
class FilePlan:
    prefix: str
    weight: float  # within its source, normalised
    train_documents: np.ndarray  # int32 sequence ids
    valid_documents: np.ndarray
    train_tokens: int
    valid_tokens: int
    demand: int = 0  # samples its GPT index is built for
    epochs: int = 0

    @property
    def dataset(self) -> IndexedDataset:
        return IndexedDataset(self.prefix)


@dataclass
class SourcePlan:
    name: str
    index: int  # source_id in batches (config order)
    kind: str
    language: str | None
    files: list[FilePlan]  # files with training tokens only
    optional: bool = False
    demand: int = 0

    @property
    def empty(self) -> bool:
        return not self.files

    @property
    def train_tokens(self) -> int:
        return sum(f.train_tokens for f in self.files)


@dataclass
class PhasePlan:
    name: str
    index: int
    start: int  # first global sample
    num_samples: int
    steps: int
    entries: list[EntryPlan]  # active blend entries (sources, replays), in blend order
    weights: np.ndarray  # normalised, same order
    requested: dict[str, float]  # the config's weights, normalised over all listed entries
    fim_rate: float  # the phase's default, for sources that opt in
    fim_spm_rate: float
    config: PhaseConfig = field(repr=False, default=None)

    @property
    def end(self) -> int:
        return self.start + self.num_samples

    @property
    def sources(self) -> list[str]:
        """Names of the active entries in blend order (the source names, and replays' own names)."""
        return [e.name for e in self.entries]

    @property
    def source_names(self) -> list[str]:
        """Sources read fresh in this phase (replays left out)."""
        return [e.source for e in self.entries if e.replay is None]

    @property
    def fim(self) -> bool:
        return any(e.fim for e in self.entries)


@dataclass
class DataPlan:
    seq_length: int
    global_batch_size: int
    seed: int
    sources: dict[str, SourcePlan]
    phases: list[PhasePlan]
    valid_fraction: float
    surplus: float
    max_epochs: int

    @property
    def total_samples(self) -> int:
        return self.phases[-1].end if self.phases else 0

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def source_names(self) -> list[str]:
        return list(self.sources)

    def phase_of_step(self, step: int) -> PhasePlan:
        g = step * self.global_batch_size
        for p in self.phases:
            if g < p.end:
                return p
        raise IndexError(f"step {step} is past the last phase ({self.total_steps} steps)")


def split_documents(num_documents: int, valid_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) sorted int32 document ids; deterministic in (num_documents, valid_fraction)."""
    all_ids = np.arange(num_documents, dtype=np.int32)
    if valid_fraction <= 0 or num_documents < 2:
        return all_ids, all_ids[:0]
    k = min(num_documents - 1, max(1, round(valid_fraction * num_documents)))
    perm = np.random.default_rng(SPLIT_SEED).permutation(num_documents)
    valid = np.sort(perm[:k]).astype(np.int32)
    train = np.sort(perm[k:]).astype(np.int32)
    return train, valid


def phase_steps(ph: PhaseConfig, seq_length: int, global_batch_size: int) -> int:
    if ph.steps is not None:
        return int(ph.steps)
    return max(1, math.ceil(int(ph.tokens) / (seq_length * global_batch_size)))


def _open_files(cfg: Config, name: str) -> list[FilePlan]:
    d = cfg.data
    src = d.sources[name]
    where = f"{cfg.source_file}: " if cfg.source_file else ""
    files, weights = [], []
    for i, prefix in enumerate(src.prefixes):
        try:
            ds = IndexedDataset(prefix)
        except IndexedFileError as e:
            raise ConfigError(f"{where}data.sources.{name}.prefixes[{i}]: {e}") from None
        train, valid = split_documents(len(ds), d.valid_fraction)
        sizes = ds.sequence_lengths
        t_tok = int(np.sum(sizes[train], dtype=np.int64))
        v_tok = int(np.sum(sizes[valid], dtype=np.int64))
        if t_tok < 2:
            log.info(f"data.sources.{name}: {prefix} has no training tokens; left out")
            continue
        files.append(FilePlan(prefix, 0.0, train, valid, t_tok, v_tok))
        weights.append(src.weights[i] if src.weights is not None else t_tok)
    if files:
        if sum(weights) <= 0:
            raise ConfigError(f"{where}data.sources.{name}.weights: the files with tokens all have weight 0")
        for f, w in zip(files, normalize(weights).tolist(), strict=True):
            f.weight = w
    return files


def make_plan(cfg: Config) -> DataPlan:
    """Everything that can go wrong with the data, found before any index is built."""
    d, t = cfg.data, cfg.train
    where = f"{cfg.source_file}: " if cfg.source_file else ""
    if not d.phases:
        raise ConfigError(f"{where}data.phases: expected at least one phase")
    sources: dict[str, SourcePlan] = {}
    for i, (name, sc) in enumerate(d.sources.items()):
        sources[name] = SourcePlan(name, i, sc.kind, sc.language, _open_files(cfg, name), sc.optional)

    phases: list[PhasePlan] = []
    start = 0
    for i, ph in enumerate(d.phases):
        active, weights = resolve_entries(i, ph, sources, phases, d.sources, where)
        if not active:
            raise ConfigError(f"{where}data.phases[{i}] ({ph.name}).blend: no source with weight > 0 has tokens")
        steps = phase_steps(ph, d.seq_length, t.global_batch_size)
        n = steps * t.global_batch_size
        total_w = sum(e.weight for e in ph.entries().values())
        phases.append(
            PhasePlan(
                ph.name,
                i,
                start,
                n,
                steps,
                active,
                normalize(weights),
                {k: e.weight / total_w for k, e in ph.entries().items()},
                ph.fim_rate,
                ph.fim_spm_rate,
                ph,
            )
        )
        start += n

    _check_tokenizer(cfg, phases, sources, where)
    if d.backend == "dali":
        from .dali import require_dali

        try:
            require_dali()
        except ImportError as e:
            raise ConfigError(f"{where}{e}") from None
    for p in phases:
        for e, size in zip(p.entries, source_sizes(p.weights, p.num_samples, d.surplus), strict=True):
            if e.replay is None:  # a replay reads samples an earlier phase already asked for
                sources[e.source].demand += size
    for s in sources.values():
        if s.demand == 0:
            continue
        file_sizes = source_sizes([f.weight for f in s.files], s.demand, d.surplus) if len(s.files) > 1 else [s.demand]
        for f, n in zip(s.files, file_sizes, strict=True):
            f.demand = n
            f.epochs = num_epochs(f.train_tokens, n, d.seq_length)
            if f.epochs > d.max_epochs:
                used = [p.name for p in phases if s.name in p.source_names]
                raise ConfigError(
                    f"{where}data.sources.{s.name}: {f.prefix} would be read {f.epochs} times ({n} samples of "
                    f"{d.seq_length + 1} tokens from {f.train_tokens} training tokens, for phases {used}), more "
                    f"than data.max_epochs={d.max_epochs}; lower its weight or the phase lengths, add data, or "
                    f"raise data.max_epochs"
                )
    return DataPlan(
        d.seq_length, t.global_batch_size, d.seed, sources, phases, d.valid_fraction, d.surplus, d.max_epochs
    )


def _check_tokenizer(cfg: Config, phases: list[PhasePlan], sources: dict, where: str) -> None:
    """The tokenizer loads, fits the model's vocabulary, and has the FIM tokens when a phase needs them."""
    fim = [(p, e) for p in phases for e in p.entries if e.fim]
    if not cfg.data.tokenizer_model:
        if fim:
            p, e = fim[0]
            raise ConfigError(
                f"{where}data.tokenizer_model: not set, but data.phases[{p.index}] ({p.name}) has "
                f"fim_rate {e.fim_rate} on {e.name}; FIM needs the tokenizer"
            )
        return
    from ..tokenizer import load_tokenizer
    from .fim import FIM_TOKENS

    try:
        tok = load_tokenizer(cfg.data.tokenizer_type, cfg.data.tokenizer_model)
    except ValueError as e:
        raise ConfigError(f"{where}data.tokenizer_model: {e}") from None
    if cfg.model.vocab_size is not None and tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"{where}model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer's "
            f"{tok.vocab_size} ({cfg.data.tokenizer_model})"
        )
    if not fim:
        return
    p, e = fim[0]
    missing = [n for n in FIM_TOKENS if n not in tok.special]
    if missing:
        raise ConfigError(
            f"{where}data.tokenizer_model: {cfg.data.tokenizer_model} has no "
            f"{', '.join('<' + m + '>' for m in missing)} token, needed by data.phases[{p.index}] "
            f"({p.name}) fim_rate {e.fim_rate} on {e.name}"
        )
