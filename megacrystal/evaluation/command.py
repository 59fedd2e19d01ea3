"""`megacrystal eval`: score a checkpoint (or an HF export) on held-out data.

    megacrystal eval --checkpoint runs/demo                         # the run's own config and validation split
    megacrystal eval --checkpoint CKPT --config C.yaml [overrides]    # another config's validation split
    megacrystal eval --checkpoint hf_dir --data web=data/web_text_document --data py=data/py_text_document \
                     --code-sources py --seq-length 2048
    torchrun --nproc-per-node 8 -m megacrystal.cli eval --checkpoint CKPT --tp 2 ...   # several ranks
    megacrystal eval --checkpoint hf_dir --harness hellaswag,arc_easy                  # lm-evaluation-harness
    megacrystal eval --checkpoint runs/demo --all [--steps 100,200]   # every kept checkpoint (eval_all.py)

Reports (a) per-source loss and perplexity (token mean of the training loss, by the training engine),
(b) fill-in-the-middle exact match and edit similarity, PSM and SPM, (c) next-line completion exact
match, on a fixed sample of held-out code documents. Console table + JSON (default for a run's
checkpoint: RUN/eval/step_XXXXXXXX-<settings fingerprint>.json, see results.py; an existing file is
kept unless --force).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..log import get_logger

log = get_logger("megacrystal.eval")

GENERATION_BATCH, BIG_GENERATION_BATCH = 16, 64
GENERATION_CACHE_BUDGET = 2 << 30  # bytes of KV cache a batch of BIG_GENERATION_BATCH prompts may take


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="megacrystal eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="run dir, checkpoint, model dir or HF directory")
    ap.add_argument("--all", action="store_true", help="score every kept checkpoint of the run --checkpoint names")
    ap.add_argument("--steps", help="with --all: only these steps (comma-separated, e.g. 1000,2000)")
    ap.add_argument("--config", help="config whose validation split to use (default: the run's own)")
    ap.add_argument("--data", action="append", default=[], metavar="NAME=PREFIX[,PREFIX]", help="evaluate on files")
    ap.add_argument("--code-sources", nargs="*", help="with --data: sources FIM/completion use (default code*)")
    ap.add_argument("--seq-length", type=int, help="with --data: sample length (default: the model's max)")
    ap.add_argument("--max-samples", type=int, help="at most this many held-out samples per source")
    ap.add_argument("--documents", type=int, default=64, help="held-out code documents to draw lines from")
    ap.add_argument("--fim-examples", type=int, default=64, help="lines scored by FIM, each PSM and SPM (0: skip)")
    ap.add_argument("--completion-examples", type=int, default=64, help="lines scored by completion (0: skip)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="longest FIM middle / completion decoded")
    ap.add_argument("--no-loss", action="store_true", help="skip the per-source losses")
    ap.add_argument("--seed", type=int, default=0, help="document sample and scored lines")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks for the losses")
    ap.add_argument("--pp", type=int, default=1, help="pipeline-parallel ranks for the losses")
    ap.add_argument("--cp", type=int, default=1, help="context-parallel ranks for the losses (each sequence split)")
    ap.add_argument("--micro-batch-size", type=int, default=8, help="samples per forward for the losses")
    ap.add_argument(
        "--generation-batch-size",
        type=int,
        help=f"prompts decoded together (default {BIG_GENERATION_BATCH} when their KV cache fits in "
        f"{GENERATION_CACHE_BUDGET >> 30} GiB, else {GENERATION_BATCH})",
    )
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 on GPU")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if available")
    ap.add_argument("--output", help="JSON path (default RUN/eval/step_N-<settings fingerprint>.json)")
    ap.add_argument("--force", action="store_true", help="replace an existing --output")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    h = ap.add_argument_group("lm-evaluation-harness (instead of the built-in scores)")
    h.add_argument("--harness", metavar="TASKS", help="comma-separated harness tasks")
    h.add_argument("--limit", type=float, help="examples per task (or fraction)")
    h.add_argument("--batch-size", default=1, help="harness batch size")
    h.add_argument("--num-fewshot", type=int, help="few-shot examples (default: the task's)")
    h.add_argument("--include-path", help="directory of extra task YAMLs")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the config")
    return ap


def _harness(a) -> int:
    try:
        from . import harness
    except ImportError as e:
        print(f"megacrystal eval: --harness needs megacrystal.evaluation.harness ({e})", file=sys.stderr)
        return 2
    tasks = [t for t in a.harness.split(",") if t]
    try:
        results = harness.run_harness(
            a.checkpoint,
            tasks,
            output=a.output,
            limit=a.limit,
            batch_size=a.batch_size,
            device=a.device,
            num_fewshot=a.num_fewshot,
            include_path=a.include_path,
        )
    except ValueError as e:  # HarnessError and the checkpoint readers' errors: one line
        print(f"megacrystal eval: {e}", file=sys.stderr)
        return 2
    print(harness.format_table(results))
    print(f"megacrystal eval: wrote {results['megacrystal']['results_file']}")
    return 0


def _parse_data(specs: list[str]) -> dict[str, list[str]]:
    out = {}
    for s in specs:
        name, eq, prefixes = s.partition("=")
        if not eq or not name or not prefixes:
            raise ValueError(f"--data {s!r}: expected NAME=PREFIX[,PREFIX...]")
        out[name] = [p for p in prefixes.split(",") if p]
    return out


def _eval_data(a, loaded, tok):
    """The held-out data (from --data, --config, or the run's own config)."""
    from ..config import ConfigError, from_dict, load_config
    from .validation_data import from_config, from_prefixes

    if a.data:
        if a.config:
            raise ValueError("give --config or --data, not both")
        sources = _parse_data(a.data)
        code = set(a.code_sources) if a.code_sources is not None else {n for n in sources if n.startswith("code")}
        unknown = sorted(code - set(sources))
        if unknown:
            raise ValueError(f"--code-sources: {unknown} not among the --data sources {sorted(sources)}")
        return from_prefixes(sources, a.seq_length or loaded.cfg.max_seq_len, code, tok.eod if tok else None)
    if a.config:
        cfg = load_config(a.config, a.overrides)
    else:
        ckpt = loaded.origin.get("checkpoint")
        trainer = Path(ckpt) / "trainer.json" if ckpt else None
        if trainer is None or not trainer.is_file():
            raise ValueError(f"{a.checkpoint}: not a training checkpoint; give --config C.yaml or --data NAME=PREFIX")
        import json

        try:
            cfg = from_dict(json.loads(trainer.read_text())["config"], str(trainer))
        except (KeyError, ConfigError, json.JSONDecodeError) as e:
            raise ValueError(f"{trainer}: no usable run config ({e}); give --config") from None
        if a.overrides:
            from ..config import apply_overrides

            cfg = from_dict(apply_overrides(cfg.to_dict(), a.overrides), str(trainer))
    return from_config(cfg)


def on_cuda(a) -> bool:
    import torch

    return a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())


def resolve_precision(a) -> str:
    return a.precision if a.precision != "auto" else ("bf16" if on_cuda(a) else "fp32")


def generation_batch(a, model_cfg, precision: str) -> int:
    """--generation-batch-size, else 64 prompts when their KV cache (every layer's keys and values over
    max_seq_len slots) takes at most 2 GiB, else 16: a small model decodes in fewer, larger steps
    (each step's cost is mostly per call); a large one keeps its cache small."""
    if a.generation_batch_size is not None:
        return a.generation_batch_size
    c = model_cfg
    per_prompt = 2 * c.num_layers * c.max_seq_len * c.num_kv_heads * c.head_dim * (4 if precision == "fp32" else 2)
    return BIG_GENERATION_BATCH if BIG_GENERATION_BATCH * per_prompt <= GENERATION_CACHE_BUDGET else GENERATION_BATCH


def scoring_settings(a, precision: str) -> dict:
    """What decides the scores (the data, what is scored, how), fingerprinted in the result's name. Not
    the layout, batch sizes or device: they change rounding only."""
    config = None
    if a.config:
        import hashlib

        config = hashlib.sha256(Path(a.config).read_bytes()).hexdigest()[:16]
    return dict(
        config=config,
        overrides=list(a.overrides),
        data=sorted(a.data),
        code_sources=None if a.code_sources is None else sorted(a.code_sources),
        seq_length=a.seq_length,
        max_samples=a.max_samples,
        documents=a.documents,
        fim_examples=a.fim_examples,
        completion_examples=a.completion_examples,
        max_new_tokens=a.max_new_tokens,
        no_loss=a.no_loss,
        seed=a.seed,
        precision=precision,
    )


def _default_output(a, loaded) -> Path | None:
    from .results import report_path, settings_fingerprint

    if a.output:
        return Path(a.output)
    o = loaded.origin
    if o.get("run_dir") and o.get("step") is not None:
        return report_path(o["run_dir"], o["step"], settings_fingerprint(scoring_settings(a, resolve_precision(a))))
    return None


def evaluate(a, loaded=None, cache: dict | None = None) -> dict | None:
    """Run the evaluation (of `loaded`, else of --checkpoint); returns the report on rank 0 (None elsewhere).
    `cache` (a dict kept between calls) reuses the engine for the next model of the same shape."""

    from ..model.transformer import count_parameters
    from ..tokenizer import load_tokenizer
    from .documents import sample_code_documents
    from .engine_runner import EvalRunner
    from .model_loading import load_for_eval
    from .per_source_loss import source_losses, total_samples
    from .results import settings_fingerprint
    from .validation_data import tokenizer_fingerprint

    t0 = time.perf_counter()
    loaded = loaded or load_for_eval(a.checkpoint)
    tok = load_tokenizer(None, loaded.tokenizer_path) if loaded.tokenizer_path else None
    if tok is None and (a.fim_examples or a.completion_examples):
        raise ValueError(f"{a.checkpoint}: no tokenizer saved with the model (needed for FIM/completion)")
    for flag, n in (("--pp", a.pp), ("--cp", a.cp)):
        if n > 1 and (a.fim_examples or a.completion_examples):
            raise ValueError(f"{flag} > 1 serves the losses only; pass --fim-examples 0 --completion-examples 0")
    data = _eval_data(a, loaded, tok)
    if data.seq_length > loaded.cfg.max_seq_len:
        raise ValueError(f"sequence length {data.seq_length} exceeds the model's max_seq_len {loaded.cfg.max_seq_len}")
    precision = resolve_precision(a)
    runner = (cache or {}).get("runner")
    if runner is not None and runner.cfg.model == loaded.cfg:
        runner.engine.load_full_model_state(loaded.state_dict)
    else:
        runner = EvalRunner(
            loaded.cfg, loaded.state_dict, a.tp, a.pp, a.micro_batch_size, precision, a.device, data.seq_length, cp=a.cp
        )
        if cache is not None:
            cache["runner"] = runner
    docs = []
    if a.fim_examples or a.completion_examples:
        docs = sample_code_documents(data.code_files, tok, a.documents, a.seed)
    n_loss = 0 if a.no_loss else total_samples(data.valid, a.max_samples)
    n_fim, n_comp = (2 * a.fim_examples, a.completion_examples) if docs else (0, 0)
    gen_batch = generation_batch(a, loaded.cfg, precision)
    bar = _progress(n_loss + n_fim + n_comp, runner.is_main and not a.no_progress)
    report: dict = {
        "format": "megacrystal-eval/1",
        "model": dict(loaded.origin, parameters=count_parameters(loaded.cfg)),
        "tokenizer": {"path": loaded.tokenizer_path, "fingerprint": tokenizer_fingerprint(loaded.tokenizer_path)},
        "validation": {
            "seq_length": data.seq_length,
            "fingerprint": data.fingerprint,
            "sources": {n: len(v) for n, v in data.valid.items()},
            "code_documents": [dict(source=d.source, prefix=d.prefix, index=d.index) for d in docs],
        },
        "settings": dict(
            seed=a.seed,
            max_new_tokens=a.max_new_tokens,
            max_samples=a.max_samples,
            precision=precision,
            tp=a.tp,
            pp=a.pp,
            cp=a.cp,
            world=runner.grid.world_size,
            micro_batch_size=a.micro_batch_size,
            generation_batch_size=gen_batch,
        ),
    }
    scoring = scoring_settings(a, precision)
    report["scoring"] = dict(fingerprint=settings_fingerprint(scoring), settings=scoring)
    if not a.no_loss:
        report["losses"] = source_losses(runner, data.valid, a.max_samples, bar.update)
    if docs and a.fim_examples:
        from .fim_scoring import score_fim

        report["fim"] = score_fim(
            docs,
            tok,
            runner.next_tokens,
            runner.max_seq_len,
            a.max_new_tokens,
            a.seed,
            a.fim_examples,
            batch_size=gen_batch,
            mapper=runner.map,
            progress=bar.update,
        )
    if docs and a.completion_examples:
        from .completion_scoring import score_completion

        report["completion"] = score_completion(
            docs,
            tok,
            runner.next_tokens,
            runner.max_seq_len,
            a.max_new_tokens,
            a.seed,
            a.completion_examples,
            batch_size=gen_batch,
            mapper=runner.map,
            progress=bar.update,
        )
    bar.close()
    report["elapsed_s"] = time.perf_counter() - t0
    return report if runner.is_main else None


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="eval", unit="item", dynamic_ncols=True, leave=False)


def _skip_exit_collection() -> None:
    """At interpreter exit a last cycle collection walks every object torch and its libraries built
    (≈0.5 s of CPU, a tenth of a demo evaluation); an exit handler freezes them first (gc.freeze), so
    it skips them. Exit handlers and the freeing of refcounted objects are unchanged; cyclic garbage is
    left to the operating system, as any object alive at exit may be."""
    global _exit_hook
    if not _exit_hook:
        import atexit
        import gc

        atexit.register(gc.freeze)
        _exit_hook = True


_exit_hook = False


def main(argv=None) -> int:
    from ..config import ConfigError

    a = build_parser().parse_args(argv)
    _skip_exit_collection()
    if not on_cuda(a):  # each CPU forward's large tensors reuse the last one's memory (host_memory.py)
        from ..host_memory import keep_freed_memory

        keep_freed_memory()
    if a.all or a.steps:
        from .eval_all import main_all

        return main_all(a)
    if a.harness:
        return _harness(a)
    from .model_loading import load_for_eval
    from .report import render, write_json

    try:
        if a.output and Path(a.output).exists() and not a.force:
            raise ValueError(
                f"{a.output}: exists (an earlier evaluation); pass --force to replace it or --output elsewhere"
            )
        loaded = load_for_eval(a.checkpoint)
        out = _default_output(a, loaded)
        if out is not None and out.exists() and not a.force:
            raise ValueError(f"{out}: exists (an earlier evaluation); pass --force to replace it or --output elsewhere")
        report = evaluate(a, loaded)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"megacrystal eval: {e}", file=sys.stderr)
        return 2
    finally:
        from ..parallel.state import destroy

        destroy()
    if report is not None:
        print(render(report))
        if out is not None:
            write_json(out, report)
            print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
