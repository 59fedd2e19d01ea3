"""`megacrystal <command> ...`: each command lives in its own module, imported only when used
(so `megacrystal preprocess` never imports torch)."""

from __future__ import annotations

import importlib
import sys

# command -> (module, function, one-line help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("megacrystal.demo", "main", "the README's main job: local corpus -> tokenizer -> indexed data -> train"),
    "local-corpus": (
        "data_tools.local_corpus",
        "main",
        "gather real text and code on this machine into per-source jsonl",
    ),
    "train-tokenizer": (
        "data_tools.train_tokenizer",
        "main",
        "train a SentencePiece BPE model with Crystal's special tokens",
    ),
    "preprocess": (
        "data_tools.preprocess",
        "main",
        "corpus -> Megatron .bin/.idx (same flags as tools/preprocess_data.py)",
    ),
    "merge": ("data_tools.merge", "main", "merge indexed-file shards into one .bin/.idx"),
    "data-inspect": (
        "megacrystal.data.inspect",
        "main",
        "per phase: samples, tokens, epochs, realised weights, FIM share",
    ),
    "train": ("megacrystal.train.main", "main", "train a model from a YAML config (+ dotted overrides)"),
    "export-hf": (
        "megacrystal.hf.convert",
        "export_main",
        "run, checkpoint or model directory -> HF directory (crystalcoder or llama layout)",
    ),
    "import-hf": (
        "megacrystal.hf.convert",
        "import_main",
        "HF directory (crystalcoder or llama layout) -> model directory",
    ),
    "generate": (
        "megacrystal.generate",
        "main",
        "sample text from a run, checkpoint or model directory, or an HF directory",
    ),
    "plot": ("megacrystal.train.plot", "main", "plot a run's metrics.jsonl"),
    "plan": ("megacrystal.plan_cli", "main", "rank layouts of a config on N GPUs by simulated step time"),
    "rehearse": (
        "megacrystal.rehearsal.command",
        "main",
        "play a launch of N GPU ranks on this CPU: collectives, transfers, host reads, memory",
    ),
    "eval": ("megacrystal.evaluation.command", "main", "per-source loss, FIM and completion scores of a checkpoint"),
    "compare": ("megacrystal.evaluation.compare", "main", "table + plot of several runs or evaluations"),
    "study": (
        "megacrystal.study.command",
        "main",
        "the curriculum study: train and evaluate variants x seeds, compare",
    ),
    "doctor": (
        "megacrystal.doctor",
        "main",
        "what is installed, which kernel/backend/loader each op uses here and why",
    ),
}


def _usage() -> str:
    w = max(map(len, COMMANDS))
    lines = ["usage: megacrystal <command> [args...]", "", "commands:"]
    lines += [f"  {name.ljust(w)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"megacrystal: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        print(f"megacrystal {name}: not available in this build ({e})", file=sys.stderr)
        return 2
    return int(fn(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
