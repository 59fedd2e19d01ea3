"""Shared inputs for the data-tools tests, built once per test session in a temporary directory:
a small local corpus (real text and code from this machine), a small SentencePiece model and a
small HF tokenizer.json trained from it -- so coverage never depends on ../shared."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CRYSTAL_TOKENIZER = ROOT.parent / "shared" / "crystal_tokenizer" / "tokenizer.json"
if not CRYSTAL_TOKENIZER.is_file():
    CRYSTAL_TOKENIZER = Path("/work/shared/crystal_tokenizer/tokenizer.json")
needs_crystal = pytest.mark.skipif(
    not CRYSTAL_TOKENIZER.is_file(), reason="Crystal's tokenizer.json (../shared/crystal_tokenizer) is not present"
)


@functools.lru_cache(None)
def session_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="mc-data-tests-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


@functools.lru_cache(None)
def small_corpus() -> Path:
    from data_tools.local_corpus import build_local_corpus

    out = session_dir() / "corpus"
    build_local_corpus(str(out), max_mb_per_source=0.25)
    return out


@functools.lru_cache(None)
def small_sp_model() -> str:
    from data_tools.train_tokenizer import train_tokenizer

    return train_tokenizer(str(small_corpus()), 700, str(session_dir() / "sp"), max_lines=30000)


@functools.lru_cache(None)
def small_hf_model() -> str:
    """A byte-level BPE tokenizer.json trained with `tokenizers` (with </s> as EOD)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from data_tools.readers import iter_documents

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<unk>", "<s>", "</s>", "<|fim_prefix|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(iter_documents(str(small_corpus())))[:200], trainer)
    path = session_dir() / "hf" / "tokenizer.json"
    path.parent.mkdir(exist_ok=True)
    tok.save(str(path))
    return str(path)


def corpus_texts(name: str = "code_python") -> list[str]:
    with open(small_corpus() / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def write_jsonl(path, records, key: str = "text") -> str:
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r if isinstance(r, dict) else {key: r}) + "\n")
    return str(path)
