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
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
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
    snippets = [t[i : i + 240] for t in code[:20] for i in range(0, len(t), 240)]
    prefixes = write_corpus(
        root, {"prose": prose, "code_a": code[::2], "code_b": code[1::2], "snippets": snippets}, tok
    )
    return {"tokenizer": tok_path, "prefixes": prefixes, "code": code, "prose": prose}


DEMO_SOURCES = ["prose_pydoc", "prose_packages", "prose_sharedoc", "code_python", "code_c", "code_web"]


def build_demo_layout(cwd: str, empty=("prose_sharedoc",)) -> None:
    """What `megacrystal demo` leaves in its working directory, made from small real texts:
    demo_data/tokenizer/tokenizer.model (SentencePiece BPE, byte fallback, FIM specials) and
    demo_data/tokens/{name}_text_document for the six demo sources (`empty` ones with no documents)."""
    import io

    import sentencepiece as spm

    from megacrystal.tokenizer import CRYSTAL_SPECIALS, load_tokenizer

    code, prose = code_texts(80, 3000), prose_texts(79, 3000)
    texts = {
        "prose_pydoc": prose[:40],
        "prose_packages": prose[40:],
        "prose_sharedoc": prose[:10],
        "code_python": code[:40],
        "code_c": code[40:60],
        "code_web": code[60:],
    }
    tok_dir = os.path.join(cwd, "demo_data", "tokenizer")
    os.makedirs(tok_dir, exist_ok=True)
    model = io.BytesIO()
    lines = [line for t in code[:30] + prose[:30] for line in t.splitlines() if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=800,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        user_defined_symbols=[f"<{s}>" for s in CRYSTAL_SPECIALS],
        minloglevel=2,
    )
    path = os.path.join(tok_dir, "tokenizer.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    tok = load_tokenizer("SentencePieceTokenizer", path)
    tokens_dir = os.path.join(cwd, "demo_data", "tokens")
    write_corpus(tokens_dir, {n: ([] if n in empty else texts[n]) for n in DEMO_SOURCES}, tok)
