"""Corpus -> Megatron `{prefix}_{key}_document.bin/.idx`, with Megatron's flags (and no torch).

    megacrystal preprocess --input X.jsonl --output-prefix P --tokenizer-type HuggingFaceTokenizer \
        --tokenizer-model tokenizer.json --append-eod --workers 2
    preprocess(inputs, output_prefix, tokenizer_type, tokenizer_model, ...) -> summary dict

The main process cuts the input into ordered tasks (readers.iter_tasks) and keeps a bounded window
of them in flight on `--workers` processes (encode.py); results are written in task order, so the
output is byte-identical for any worker count and memory stays flat in the input size. Outputs are
written as *.tmp and renamed only when all input was read: a failure (damaged input, a worker
error or crash, SIGTERM/SIGINT) publishes nothing, leaves earlier outputs untouched and never hangs;
workers die with the parent (workers.py); a SIGKILLed run's *.tmp are removed by the next run on the
same prefix (output_lock.py). Damaged input (streams.py, readers.py) fails the run with one line
naming the file and line/byte, or with `skip_bad_files` the file is left out and named in the
summary. Records of the wrong shape are skipped and counted by reason in `{prefix}_summary.json`
(docs, tokens, skipped, seconds, throughput). Document text never yields control tokens unless
`allow_special_in_text` (megacrystal/tokenizer.py). `--partitions N` also keeps N contiguous shards
`{prefix}_{i}_{key}_document` (as Megatron does) and merges them into the same final files.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .code_tree import MAX_FILE_BYTES
from .encode import Encoder, init_worker, run_task, set_parent_encoder
from .inputs import expand_inputs
from .megatron_flags import add_megatron_flags, refusal
from .output_lock import OutputLock
from .output_writers import OutputWriters, output_prefix_for
from .readers import CHUNK_BYTES, iter_tasks, verify_file
from .streams import DamagedInput
from .workers import Terminated, kill_workers, on_signals, stop_pool


class PreprocessError(RuntimeError):
    """Preprocessing failed; the message says where. Nothing already written was replaced."""


def _progress(total_bytes: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    tqdm.monitor_interval = 0  # no monitor thread: worker processes are forked later
    return tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        desc="preprocess",
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def preprocess(
    inputs,
    output_prefix: str,
    tokenizer_type: str | None,
    tokenizer_model: str,
    json_keys: Sequence[str] = ("text",),
    append_eod: bool = False,
    workers: int | None = None,
    partitions: int = 1,
    log_interval: int = 10000,
    input_format: str = "auto",
    progress: bool | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    max_file_bytes: int = MAX_FILE_BYTES,
    allow_special_in_text: bool = False,
    skip_bad_lines: bool = False,
    skip_bad_files: bool = False,
) -> dict:
    """Tokenize `inputs` into `{output_prefix}_{key}_document.bin/.idx`; returns the summary dict.

    `allow_special_in_text`: parse special-token spellings in the text as the tokenizer does (Megatron's
    behaviour); by default text never yields control tokens. `skip_bad_lines`: count and skip jsonl lines
    that are not UTF-8/JSON instead of failing. `skip_bad_files`: check each jsonl/parquet file to its end
    before using it and leave damaged ones out (named in the summary's `bad_files`) instead of failing."""
    t0 = time.time()
    workers = int(workers or os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"--workers: expected >= 1, got {workers}")
    if partitions < 1:
        raise ValueError(f"--partitions: expected >= 1, got {partitions}")
    keys = list(json_keys)
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"--json-keys: expected distinct keys, got {keys}")
    files = expand_inputs(inputs, input_format)
    enc_args = (
        tokenizer_type,
        tokenizer_model,
        keys,
        append_eod,
        max_file_bytes,
        allow_special_in_text,
        skip_bad_lines,
    )
    encoder = Encoder(*enc_args)  # loads the tokenizer once; forked workers inherit it
    dtype = encoder.dtype
    file_bytes = sum(os.path.getsize(p) for p, _ in files)
    total_bytes = file_bytes or 1
    parent = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(parent, exist_ok=True)

    writers = OutputWriters(output_prefix, keys, dtype, partitions)
    bad_files: list[dict] = []

    def admit(path: str, fmt: str) -> bool:
        try:
            verify_file(path, fmt, keys, skip_bad_lines)
            return True
        except DamagedInput as e:
            bad_files.append({"path": path, "error": str(e)})
            print(f"preprocess: skipping {e}", file=sys.stderr)
            return False

    stats = Counter()
    docs = tokens = in_bytes = 0
    bar = _progress(total_bytes, sys.stderr.isatty() if progress is None else progress)
    next_log = log_interval
    startup = time.time() - t0

    def consume(r) -> None:
        nonlocal docs, tokens, in_bytes, next_log
        writers.to_partition(min(partitions - 1, max(0, (r.pos - 1)) * partitions // total_bytes))
        writers.write(r.arrays)
        stats.update(r.skipped)
        docs += r.docs
        tokens += r.tokens
        in_bytes += r.in_bytes
        dt = max(time.time() - t0, 1e-9)
        if bar is not None:
            bar.n = min(r.pos, total_bytes)
            bar.set_postfix_str(
                f"{docs / dt:,.0f} docs/s {in_bytes / dt / 1e6:.2f} MB/s {tokens / dt:,.0f} tok/s", refresh=False
            )
            bar.refresh()
        elif log_interval and docs >= next_log:
            print(
                f"processed {docs} documents ({docs / dt:,.0f} docs/s, {in_bytes / dt / 1e6:.2f} MB/s, "
                f"{tokens / dt:,.0f} tokens/s)",
                file=sys.stderr,
            )
            next_log = (docs // log_interval + 1) * log_interval

    pool = None
    stop: list[int] = []  # the signal that asked this run to stop
    publishing = False

    def on_signal(signum: int) -> None:
        if stop and pool is not None:  # a second signal: stop now (the next run removes the *.tmp)
            kill_workers(pool)
            os._exit(128 + signum)
        if pool is None and not publishing:  # no executor whose locks an exception could leave held
            raise Terminated(signum)
        stop.append(signum)  # raised once the task in hand returns (about a second); ignored while publishing

    saved_env = {k: os.environ.get(k) for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    try:
        with on_signals(on_signal), OutputLock(output_prefix, writers.tmp_names()) as lock:
            clean = False
            try:
                tasks = iter_tasks(files, chunk_bytes=chunk_bytes, admit=admit if skip_bad_files else None)
                os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one tokenizer thread per process
                if workers == 1:
                    for task in tasks:  # in-process: the same code path as a worker
                        consume(encoder(task))
                else:
                    fork = sys.platform.startswith("linux")
                    set_parent_encoder(encoder if fork else None)
                    ctx = mp.get_context("fork" if fork else "spawn")
                    pool = ProcessPoolExecutor(
                        workers, mp_context=ctx, initializer=init_worker, initargs=(os.getpid(), *enc_args)
                    )
                    window: deque = deque()
                    for task in tasks:
                        if stop:
                            raise Terminated(stop[0])
                        window.append(pool.submit(run_task, task))
                        if len(window) >= 2 * workers + 1:
                            consume(window.popleft().result())
                    while window and not stop:
                        consume(window.popleft().result())
                if stop:
                    raise Terminated(stop[0])
                publishing = True  # a signal now lets the renames finish
                writers.finish()  # publishes: every input was read to its verified end
                clean = True
            finally:
                if pool is not None:
                    stop_pool(pool)  # queued tasks are cancelled, the ones running finish (about a second)
                    set_parent_encoder(None)
                if not clean:
                    writers.abort()
            seconds = time.time() - t0
            summary = {
                "outputs": {k: output_prefix_for(output_prefix, k) for k in keys},
                "partitions": [output_prefix_for(f"{output_prefix}_{p}", k) for p in range(partitions) for k in keys]
                if partitions > 1
                else [],
                "inputs": [p for p, _ in files],
                "input_bytes": in_bytes,
                "input_file_bytes": file_bytes,
                "bad_files": bad_files,
                "leftovers_removed": lock.leftovers,
                "documents": docs,
                "tokens": tokens,
                "skipped": dict(sorted(stats.items())),
                "skipped_total": sum(stats.values()),
                "tokenizer": {"type": encoder.tok.kind, "model": os.path.abspath(encoder.tok.path)},
                "dtype": dtype.name,
                "append_eod": append_eod,
                "allow_special_in_text": allow_special_in_text,
                "workers": workers,
                "seconds": round(seconds, 3),
                "startup_seconds": round(startup, 3),
                "docs_per_s": round(docs / seconds, 1),
                "mb_per_s": round(in_bytes / seconds / 1e6, 3),
                "tokens_per_s": round(tokens / seconds, 1),
            }
            _write_json(f"{output_prefix}_summary.json", summary)
    except BrokenProcessPool as e:
        raise PreprocessError(
            f"preprocess: a worker process died ({e}); nothing was written to {output_prefix}_*"
        ) from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        raise PreprocessError(f"preprocess: {e}; nothing was written to {output_prefix}_*") from e
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if bar is not None:
            bar.close()
    return summary


def _write_json(path: str, obj) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def build_parser(prog: str = "preprocess_data.py") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog, description="Tokenize a corpus into Megatron .bin/.idx files (Megatron's flags)."
    )
    g = ap.add_argument_group("input data")
    g.add_argument("--input", nargs="+", required=True, help="file(s), glob(s) or directory of shards")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys to extract from the json (default: text)")
    g.add_argument(
        "--input-format", default="auto", help="auto (by extension), jsonl, jsonl.gz, jsonl.zst, parquet, text or code"
    )
    g.add_argument("--skip-bad-files", action="store_true", help="leave damaged files out (named in the summary)")
    g.add_argument("--skip-bad-lines", action="store_true", help="count and skip jsonl lines that are not UTF-8/JSON")
    g = ap.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, help="SentencePieceTokenizer or HuggingFaceTokenizer")
    g.add_argument(
        "--tokenizer-model",
        required=True,
        help="tokenizer.model (SentencePiece), tokenizer.json or a HF tokenizer directory (HF)",
    )
    g.add_argument("--append-eod", action="store_true", help="append the end-of-document token to each document")
    g.add_argument(
        "--allow-special-in-text",
        action="store_true",
        help="let text like </s> or <|fim_prefix|> become control tokens (Megatron's behaviour; off by default)",
    )
    g = ap.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="writes {prefix}_{key}_document.bin/.idx")
    g = ap.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    g.add_argument("--partitions", type=int, default=1, help="also keep N contiguous output shards, merged at the end")
    g.add_argument("--log-interval", type=int, default=10000, help="documents between progress lines (no TTY)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    add_megatron_flags(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser("preprocess_data.py" if argv is None else "megacrystal preprocess").parse_args(argv)
    refused = refusal(a)
    if refused:
        print(f"preprocess: {refused}", file=sys.stderr)
        return 2
    try:
        s = preprocess(
            a.input,
            a.output_prefix,
            a.tokenizer_type,
            a.tokenizer_model,
            json_keys=a.json_keys,
            append_eod=a.append_eod,
            workers=a.workers,
            partitions=a.partitions,
            log_interval=a.log_interval,
            input_format=a.input_format,
            progress=False if a.no_progress else None,
            allow_special_in_text=a.allow_special_in_text,
            skip_bad_lines=a.skip_bad_lines,
            skip_bad_files=a.skip_bad_files,
        )
    except Terminated as e:
        print(f"preprocess: stopped by signal {e.signum}; nothing was written to {a.output_prefix}_*", file=sys.stderr)
        return int(e.code)
    except KeyboardInterrupt:
        print(f"preprocess: interrupted; nothing was written to {a.output_prefix}_*", file=sys.stderr)
        return 130
    except (ValueError, OSError, PreprocessError) as e:
        print(f"preprocess: {e}" if not str(e).startswith("preprocess:") else str(e), file=sys.stderr)
        return 1
    skipped = ", ".join(f"{k} {v}" for k, v in s["skipped"].items()) or "none"
    bad = "; ".join(b["path"] for b in s["bad_files"])
    print(
        f"wrote {', '.join(p + '.bin/.idx' for p in s['outputs'].values())}: {s['documents']} documents, "
        f"{s['tokens']} tokens in {s['seconds']:.2f} s ({s['docs_per_s']:,.0f} docs/s, {s['mb_per_s']:.2f} MB/s); "
        f"skipped: {skipped}" + (f"; {len(s['bad_files'])} damaged files left out: {bad}" if bad else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
