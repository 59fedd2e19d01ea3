"""`megacrystal demo`: the README's main job, end to end on one CPU box.

1. gather the local corpus (real prose and code already on this machine) -> demo_data/corpus/*.jsonl
2. train a SentencePiece BPE tokenizer with Crystal's special tokens -> demo_data/tokenizer/
3. preprocess every source into Megatron .bin/.idx -> demo_data/tokens/
4. train a tiny Crystal through two phases (examples/demo.yaml) -> runs/demo/
Steps whose outputs exist are reused (delete demo_data/ to rebuild). Extra arguments are config
overrides for the training step, e.g. `megacrystal demo train.max_steps=20`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli import main as cli
from .log import get_logger

SOURCES = ["prose_pydoc", "prose_packages", "prose_sharedoc", "code_python", "code_c", "code_web"]


def demo_config() -> Path:
    here = Path(__file__).resolve().parent
    for p in (
        Path.cwd() / "examples" / "demo.yaml",
        here.parent / "examples" / "demo.yaml",
        here / "examples" / "demo.yaml",
    ):
        if p.is_file():
            return p
    raise FileNotFoundError("examples/demo.yaml not found (run from the repository root)")


def _step(title: str, argv: list[str]) -> None:
    log = get_logger()
    log.info(f"demo: {title}: megacrystal {' '.join(argv)}")
    t = time.perf_counter()
    rc = cli(argv)
    if rc:
        raise SystemExit(f"megacrystal demo: step '{title}' failed (exit code {rc})")
    log.info(f"demo: {title} done in {time.perf_counter() - t:.1f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="demo_data", help="corpus, tokenizer and tokens go here (reused)")
    ap.add_argument("--out-dir", default="runs/demo", help="the training run's train.out_dir")
    ap.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary size")
    ap.add_argument("--skip-train", action="store_true", help="stop after preprocessing")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value overrides for training")
    a = ap.parse_args(argv)
    data = Path(a.data_dir)
    corpus, tok_dir, tokens = data / "corpus", data / "tokenizer", data / "tokens"

    if not (corpus / "summary.json").is_file():
        _step("local corpus", ["local-corpus", "--output", str(corpus)])
    tok_model = tok_dir / "tokenizer.model"
    if not tok_model.is_file():
        _step(
            "tokenizer",
            [
                "train-tokenizer",
                "--input",
                *[str(corpus / f"{s}.jsonl") for s in SOURCES],
                "--vocab-size",
                str(a.vocab_size),
                "--output",
                str(tok_dir),
            ],
        )
    for s in SOURCES:
        prefix = tokens / s
        if not Path(f"{prefix}_text_document.idx").is_file():
            _step(
                f"preprocess {s}",
                [
                    "preprocess",
                    "--input",
                    str(corpus / f"{s}.jsonl"),
                    "--json-keys",
                    "text",
                    "--output-prefix",
                    str(prefix),
                    "--tokenizer-type",
                    "SentencePieceTokenizer",
                    "--tokenizer-model",
                    str(tok_model),
                    "--append-eod",
                    "--workers",
                    "2",
                ],
            )
    if a.skip_train:
        return 0
    _step(
        "train",
        [
            "train",
            "--config",
            str(demo_config()),
            f"train.out_dir={a.out_dir}",
            f"data.tokenizer_model={tok_model}",
            *a.overrides,
        ],
    )
    get_logger().info(
        f"demo: finished; metrics in {a.out_dir}/metrics.jsonl, plot with "
        f"`megacrystal plot --run {a.out_dir}`, export with `megacrystal export-hf --checkpoint "
        f"{a.out_dir} --format crystalcoder --output hf_demo`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
