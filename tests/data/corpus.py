"""Small real corpora for the data tests: stdlib Python files (code) and pydoc topics (prose),
tokenized by a byte-level BPE trained in-process (lossless, with Crystal's FIM specials), written
as indexed files with IndexedDatasetWriter."""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np

SPECIALS = ["</s>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]


def code_texts(limit: int = 60, max_chars: int = 6000) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py"))[:limit]
    return [p.read_text(encoding="utf-8", errors="replace")[:max_chars] for p in files]


def prose_texts(limit: int = 60, max_chars: int = 4000) -> list[str]:
    import pydoc_data.topics as t
    return [t.topics[k][:max_chars] for k in sorted(t.topics)[:limit]]


def train_tokenizer(path: str, texts: list[str], vocab_size: int = 600) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(path)
    return path


def write_corpus(root: str, names_texts: dict[str, list[str]], tok) -> dict[str, str]:
    """{name: prefix} of indexed files holding each text + EOD."""
    from megacrystal.data.indexed import IndexedDatasetWriter
    out = {}
    for name, texts in names_texts.items():
        prefix = os.path.join(root, f"{name}_text_document")
        with IndexedDatasetWriter(prefix, dtype=np.uint16) as w:
            for ids in tok.encode_batch(texts):
                if ids:
                    w.add_document(ids + [tok.eod])
        out[name] = prefix
    return out


def build(root: str) -> dict:
    """Tokenizer + three sources (prose, python halves) under root; returns paths."""
    from megacrystal.tokenizer import load_tokenizer
    os.makedirs(root, exist_ok=True)
    code, prose = code_texts(), prose_texts()
    tok_path = train_tokenizer(os.path.join(root, "tokenizer.json"), code[:30] + prose[:30])
    tok = load_tokenizer("HuggingFaceTokenizer", tok_path)
    snippets = [t[i:i + 240] for t in code[:20] for i in range(0, len(t), 240)]
    prefixes = write_corpus(root, {"prose": prose, "code_a": code[::2], "code_b": code[1::2],
                                   "snippets": snippets}, tok)
    return {"tokenizer": tok_path, "prefixes": prefixes, "code": code, "prose": prose}
