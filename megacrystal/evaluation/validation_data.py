"""What `megacrystal eval` measures on: the held-out samples of each source and the held-out code
documents, from a run config (its validation split, exactly the samples the trainer evaluates on)
or from `.bin/.idx` prefixes named on the command line (every document of those files).

    data = from_config(cfg)  |  from_prefixes({"web": ["data/web_text_document"]}, seq_length, code={"py"})
    data.valid          {source: ValidationSet}     samples of seq_length + 1 tokens, one epoch
    data.code_files     [(source, prefix, sequence ids)] for FIM and completion
    data.fingerprint    content hash of the held-out set (sequence lengths, document ids, seq_length)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..data.index_cache import array_fingerprint

EVAL_SEED = 0  # orders the held-out documents into samples; fixed so runs with other data seeds compare


@dataclass
class EvalData:
    seq_length: int
    valid: dict
    code_files: list
    files: list = field(default_factory=list)  # (source, prefix, held-out sequence ids) of every source

    @property
    def fingerprint(self) -> str:
        return validation_fingerprint(self.seq_length, self.files)


def validation_fingerprint(seq_length: int, files) -> str:
    """Identifies a held-out set by content: per source and file, the hash of the file's sequence
    lengths (its .idx) and of the held-out sequence ids; paths do not matter."""
    from ..data.indexed import IndexedDataset

    desc = {"seq_length": int(seq_length), "files": []}
    for source, prefix, docs in files:
        lengths = IndexedDataset(prefix).sequence_lengths
        desc["files"].append([source, array_fingerprint(np.asarray(lengths)), array_fingerprint(np.asarray(docs))])
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def from_config(cfg) -> EvalData:
    """The config's validation split (data.valid_fraction of each file's documents; the split does not
    depend on data.seed, and the samples are cut with EVAL_SEED)."""
    from ..config import ConfigError
    from ..data.loader import build_validation
    from ..data.plan import make_plan
    from ..tokenizer import load_tokenizer

    d = cfg.data
    if d.valid_fraction <= 0:
        where = f"{cfg.source_file}: " if cfg.source_file else ""
        raise ConfigError(f"{where}data.valid_fraction: 0, so the config has no validation split to evaluate on")
    cfg = copy.deepcopy(cfg)
    for ph in cfg.data.phases:  # every source with held-out documents, whichever a phase validates in training
        ph.valid_sources = None
    plan = make_plan(cfg)
    plan.seed = EVAL_SEED  # the same held-out samples whatever the run's data.seed
    tok = load_tokenizer(d.tokenizer_type, d.tokenizer_model) if d.tokenizer_model else None
    cache_dir = d.cache_dir or os.path.join(cfg.train.out_dir, "index_cache")
    valid = build_validation(plan, cache_dir, False, tok.eod if tok else None)
    files = [(s.name, f.prefix, f.valid_documents) for s in plan.sources.values() for f in s.files]
    code = [(s.name, f.prefix, f.valid_documents) for s in plan.sources.values() if s.kind == "code" for f in s.files]
    return EvalData(d.seq_length, valid, code, files)


def from_prefixes(sources: dict[str, list[str]], seq_length: int, code: set[str], eod: int | None) -> EvalData:
    """Every document of the given files; `code` names the sources FIM and completion draw from."""
    from ..data.indexed import IndexedDataset, IndexedFileError
    from ..data.loader import ValidationSet
    from ..data.phases import SourceStream
    from ..data.plan import FilePlan, SourcePlan

    valid, files, code_files = {}, [], []
    for i, (name, prefixes) in enumerate(sources.items()):
        fps = []
        for prefix in prefixes:
            try:
                ds = IndexedDataset(prefix)
            except IndexedFileError as e:
                raise ValueError(f"--data {name}={prefix}: {e}") from None
            docs = np.arange(len(ds), dtype=np.int32)
            tokens = int(np.sum(ds.sequence_lengths, dtype=np.int64))
            fps.append(FilePlan(prefix, 1.0, docs[:0], docs, 0, tokens))
            files.append((name, prefix, docs))
            if name in code:
                code_files.append((name, prefix, docs))
        sp = SourcePlan(name, i, "code" if name in code else "nl", None, fps)
        stream = SourceStream(sp, seq_length, 0, None, False, split="valid")
        if not stream.indices or len(stream) == 0:
            raise ValueError(f"--data {name}: fewer than {seq_length + 1} tokens in its files (one sample)")
        valid[name] = ValidationSet(stream, i, eod)
    return EvalData(seq_length, valid, code_files, files)


def tokenizer_fingerprint(path: str | None) -> str | None:
    """Content hash of a tokenizer file (two runs compare only with the same one)."""
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
