"""Synthetic stand-ins for Crystal's twelve corpora, of the right relative sizes, at a reduced scale.

    overrides, scale = build(root, tokenizer, seq_length=64, global_batch_size=1)
    cfg = load_config("examples/crystal_7b.yaml", overrides)   # the recipe as written, scaled

Scale: the run keeps its steps and weights but takes `global_batch_size` samples of `seq_length`
tokens per step instead of 2112 x 2048, so every token figure is divided by
scale = (2112 / global_batch_size) x (2048 / seq_length); the corpora are divided by the same
factor, so every epoch figure is the full run's. Sizes follow the recipe's description of its
data: phases 1 and 2 together read each SlimPajama subset once (phase 1 "half", phase 2 "the other
half"), phase 2 reads StarCoderData twice, phase 3 reads its Python/HTML/JavaScript/CSS three
times. Documents: random token ids (the tokenizer's ordinary vocabulary, no specials) of
log-normal lengths around 0.6 x seq_length, each ending with EOD, written as real indexed files.
"""

from __future__ import annotations

import os

import numpy as np
import yaml

from megacrystal.data.indexed import IndexedDatasetWriter

RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "crystal_7b.yaml")
FULL_BATCH, FULL_SEQ = 2112, 2048


def full_tokens(recipe: dict) -> dict[str, float]:
    """Full-scale training tokens of each source's stand-in, from the recipe's phases and weights."""
    phases = {p["name"]: p for p in recipe["data"]["phases"]}
    per_step = FULL_BATCH * FULL_SEQ

    def read(phase: str, source: str) -> float:
        p = phases[phase]
        weights = {k: (v["weight"] if isinstance(v, dict) else v) for k, v in p["blend"].items()}
        return p["steps"] * per_step * weights.get(source, 0.0) / sum(weights.values())

    out = {}
    for s in recipe["data"]["sources"]:
        if s.startswith("slimpajama_"):
            out[s] = read("phase1", s) + read("phase2", s)  # one epoch over phases 1 and 2
        elif s == "starcoder":
            out[s] = read("phase2", s) / 2  # two epochs in phase 2
        else:
            out[s] = read("phase3", s) / 3  # three epochs in phase 3
    return out


def build(root: str, tokenizer, seq_length: int = 64, global_batch_size: int = 1, seed: int = 0):
    """Write the stand-ins under root; return (config overrides for crystal_7b.yaml, scale)."""
    with open(RECIPE) as f:
        recipe = yaml.safe_load(f)
    scale = (FULL_BATCH / global_batch_size) * (FULL_SEQ / seq_length)
    rng = np.random.default_rng(seed)
    specials = set(tokenizer.special.values()) | {tokenizer.eod}
    low = max(specials & set(range(0, 1000)), default=-1) + 1  # past the low specials (<unk>, <s>, </s>)
    high = min(i for i in specials if i >= 1000) if any(i >= 1000 for i in specials) else tokenizer.vocab_size
    overrides = [
        f"data.seq_length={seq_length}",
        f"train.global_batch_size={global_batch_size}",
        "train.micro_batch_size=1",
        f"data.tokenizer_model={tokenizer.path}",
        f"data.cache_dir={os.path.join(root, 'index_cache')}",
        f"train.out_dir={os.path.join(root, 'run')}",
    ]
    mean = 0.6 * seq_length
    for name, tokens in full_tokens(recipe).items():
        n = round(tokens / scale)
        lengths = np.maximum(2, rng.lognormal(np.log(mean), 0.8, size=int(n / mean) + 16).astype(np.int64))
        cut = int(np.searchsorted(np.cumsum(lengths), n)) + 1
        lengths = lengths[:cut]
        lengths[-1] -= int(lengths.sum()) - n  # exactly n tokens
        lengths = lengths[lengths >= 2]
        flat = rng.integers(low, high, size=int(lengths.sum()), dtype=np.int64)
        flat[np.cumsum(lengths) - 1] = tokenizer.eod
        prefix = os.path.join(root, f"{name}_text_document")
        with IndexedDatasetWriter(prefix, dtype=np.uint16) as w:
            w.add_documents(flat, lengths)
        overrides.append(f"data.sources.{name}.prefixes=[{prefix}]")
    return overrides, scale
