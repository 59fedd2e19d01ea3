"""The rest of Megatron-LM's tools/preprocess_data.py flag set: accepted where Megatron gives them no
effect on GPT-style document preprocessing, refused (with the flag named) where they ask for
something megacrystal does not do. The flags megacrystal acts on are defined in preprocess.py.

    add_megatron_flags(parser);  msg = refusal(args)   # None, or one line naming the flag
"""

from __future__ import annotations

import argparse
import importlib.util

OUR_TOKENIZER_TYPES = ("SentencePieceTokenizer", "HuggingFaceTokenizer")
# Megatron-LM's --tokenizer-type choices (megatron/training/arguments.py), for a precise refusal
MEGATRON_TOKENIZER_TYPES = (
    "BertWordPieceLowerCase",
    "BertWordPieceCase",
    "GPT2BPETokenizer",
    "SentencePieceTokenizer",
    "GPTSentencePieceTokenizer",
    "HuggingFaceTokenizer",
    "Llama2Tokenizer",
    "Llama3Tokenizer",
    "QwenTokenizer",
    "TikTokenizer",
    "MultimodalTokenizer",
    "NullTokenizer",
    "DeepSeekV2Tokenizer",
)


def add_megatron_flags(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("Megatron compatibility (see docs/data.md)")
    ignored = "accepted, no effect (as in Megatron for GPT-style documents)"
    other = "refused: another tokenizer family"
    search = "refused: Megatron's worker-count search (use benchmarks/preprocess.py)"
    # honoured: our partitions are always contiguous runs of the input in order
    g.add_argument("--keep-sequential-samples", action="store_true", help="accepted: partitions are always in order")
    # no effect without --split-sentences, as in Megatron
    g.add_argument("--keep-newlines", action="store_true", help=ignored)
    g.add_argument("--lang", default="english", help=ignored)
    g.add_argument("--split-sentences", action="store_true", help="refused (GPT-style pretraining keeps documents)")
    # tokenizer flags Megatron's script ignores for SentencePiece/HF (it resets vocab_extra_ids to 0)
    g.add_argument("--vocab-size", type=int, default=None, help=ignored)
    g.add_argument("--vocab-extra-ids", type=int, default=0, help=ignored)
    # refused when given: other tokenizer families
    g.add_argument("--vocab-file", default=None, help=other)
    g.add_argument("--merge-file", default=None, help=other)
    g.add_argument("--tiktoken-pattern", default=None, help=other)
    g.add_argument("--tiktoken-num-special-tokens", type=int, default=None, help=other)
    g.add_argument("--tiktoken-special-tokens", nargs="+", default=None, help=other)
    # refused: the worker-count search; its knobs alone have no effect
    g.add_argument("--find-optimal-num-workers", action="store_true", help=search)
    g.add_argument("--workers-to-check", nargs="+", default=None, help=ignored)
    g.add_argument("--max-documents", type=int, default=None, help=ignored)
    g.add_argument("--performance-dir", default=None, help=ignored)


def refusal(a: argparse.Namespace) -> str | None:
    """None when the command line can run; else one line naming the flag that cannot be honoured."""
    if a.split_sentences:
        why = (
            "it needs NLTK, which is not installed, and megacrystal"
            if importlib.util.find_spec("nltk") is None
            else "megacrystal"
        )
        return (
            f"--split-sentences is not supported: {why} does not split documents into sentences "
            "(a BERT-style option; GPT-style pretraining indexes whole documents)"
        )
    if a.tokenizer_type not in OUR_TOKENIZER_TYPES:
        known = "Megatron's" if a.tokenizer_type in MEGATRON_TOKENIZER_TYPES else "an unknown"
        return (
            f"--tokenizer-type {a.tokenizer_type} ({known} type) is not supported: use SentencePieceTokenizer "
            "(a .model file) or HuggingFaceTokenizer (a tokenizer.json or a HF tokenizer directory)"
        )
    for flag in ("vocab_file", "merge_file"):
        if getattr(a, flag) is not None:
            return (
                f"--{flag.replace('_', '-')} is not supported (GPT2BPE/BERT vocab files): "
                "convert the tokenizer to a HF tokenizer.json and use --tokenizer-type HuggingFaceTokenizer"
            )
    for flag in ("tiktoken_pattern", "tiktoken_num_special_tokens", "tiktoken_special_tokens"):
        if getattr(a, flag) is not None:
            return f"--{flag.replace('_', '-')} is not supported (TikTokenizer is not supported)"
    if a.find_optimal_num_workers:
        return "--find-optimal-num-workers is not supported: measure worker counts with benchmarks/preprocess.py"
    return None
