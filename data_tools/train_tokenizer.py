"""Train a SentencePiece BPE tokenizer (byte fallback, lossless on code) with Crystal's special tokens.

    megacrystal train-tokenizer --input DIR_OR_FILES... --vocab-size N --output DIR
    train_tokenizer(inputs, vocab_size, out_dir) -> path of DIR/tokenizer.model

Lossless round trip: identity normalisation, no whitespace folding, no dummy prefix, byte
fallback for unseen characters, whitespace-only pieces allowed (indentation), and the newline is
a user-defined symbol: SentencePiece reads its training text a line at a time, so documents are
fed line by line and "\n" is reserved as its own piece -- any SentencePiece runtime (ours,
Megatron's) then keeps newlines. Crystal's specials (docs/recipe.md, Tokenizer and special tokens) follow as user-defined symbols
(ids 3.. after <unk>=0, <s>=1, </s>=2 (EOD)). Output: DIR/tokenizer.model, DIR/tokenizer.vocab,
DIR/tokenizer_summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator

from megacrystal.tokenizer import CRYSTAL_SPECIALS

from .readers import iter_documents

NEWLINE = "\n"
MAX_LINE_CHARS = 4096  # SentencePiece's max_sentence_length is in bytes; longer lines are cut


def special_symbols() -> list[str]:
    return [NEWLINE] + [f"<{n}>" for n in CRYSTAL_SPECIALS]


def _lines(docs: Iterable[str], max_chars: int) -> Iterator[str]:
    for text in docs:
        for line in text.split(NEWLINE):
            if not line:
                continue
            while len(line) > max_chars:
                yield line[:max_chars]
                line = line[max_chars:]
            yield line


def _sample(lines: Iterator[str], max_lines: int, seed: int) -> list[str]:
    """A deterministic uniform sample of at most `max_lines` lines (reservoir), memory bounded."""
    rng = random.Random(seed)
    out: list[str] = []
    for i, line in enumerate(lines):
        if i < max_lines:
            out.append(line)
        else:
            j = rng.randrange(i + 1)
            if j < max_lines:
                out[j] = line
    return out


def train_tokenizer(
    inputs,
    vocab_size: int,
    out_dir: str,
    key: str = "text",
    fmt: str = "auto",
    max_lines: int = 2_000_000,
    seed: int = 1234,
    threads: int | None = None,
    character_coverage: float = 0.9995,
) -> str:
    import sentencepiece as spm

    specials = special_symbols()
    min_vocab = 3 + 256 + len(specials) + 16
    if vocab_size < min_vocab:
        raise ValueError(
            f"--vocab-size: expected at least {min_vocab} (3 control + 256 bytes + "
            f"{len(specials)} specials + some merges), got {vocab_size}"
        )
    t0 = time.time()
    stats: Counter = Counter()
    lines = _sample(_lines(iter_documents(inputs, key=key, fmt=fmt, stats=stats), MAX_LINE_CHARS), max_lines, seed)
    if not lines:
        raise ValueError(f"--input {inputs}: no text found to train on (skipped: {dict(stats)})")
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, "tokenizer")
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=prefix,
            vocab_size=vocab_size,
            model_type="bpe",
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            split_by_whitespace=True,
            max_sentence_length=4 * MAX_LINE_CHARS + 16,
            user_defined_symbols=specials,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            character_coverage=character_coverage,
            hard_vocab_limit=False,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(f"train-tokenizer: SentencePiece refused the settings ({e})") from None
    summary = {
        "model": prefix + ".model",
        "vocab_size": vocab_size,
        "kind": "SentencePiece BPE, byte fallback",
        "training_lines": len(lines),
        "skipped": dict(stats),
        "specials": specials[1:],
        "newline_piece": True,
        "seconds": round(time.time() - t0, 2),
    }
    with open(os.path.join(out_dir, "tokenizer_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return prefix + ".model"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal train-tokenizer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", nargs="+", required=True, help="corpus files, globs or directories")
    ap.add_argument("--vocab-size", type=int, required=True, help="pieces, special tokens included")
    ap.add_argument("--output", required=True, help="directory for tokenizer.model / tokenizer.vocab")
    ap.add_argument("--json-key", default="text", help="field of jsonl records to read (default text)")
    ap.add_argument("--input-format", default="auto", help="auto (by extension) or a reader name, as in preprocess")
    ap.add_argument("--max-lines", type=int, default=2_000_000, help="lines sampled for training")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the line sample")
    a = ap.parse_args(argv)
    try:
        path = train_tokenizer(
            a.input, a.vocab_size, a.output, key=a.json_key, fmt=a.input_format, max_lines=a.max_lines, seed=a.seed
        )
    except (ValueError, OSError) as e:
        print(f"megacrystal train-tokenizer: {e}", file=sys.stderr)
        return 2
    from megacrystal.tokenizer import load_tokenizer

    tok = load_tokenizer("SentencePieceTokenizer", path)
    print(f"wrote {path}: vocab {tok.vocab_size}, eod {tok.eod}, {len(tok.special)} Crystal specials")
    return 0


if __name__ == "__main__":
    sys.exit(main())
