"""Preprocessing benchmark: ours (--workers 1, 2) vs a plain per-document baseline vs the tokenizer alone.

    python benchmarks/preprocess.py [--mb 50] [--big-gb 1.0] [--tokenizer-model PATH] [--repeats 2]

Input: the local corpus (data_tools.local_corpus, all of it) replicated to >= --mb MB of jsonl.
Every figure is wall time of a fresh process (start-up, reading, writing included), measured here
in the same run as the ceiling: HF `encode_batch` on the same texts, in memory, with the same
number of threads (RAYON_NUM_THREADS). Peak RSS is the largest sum over the process tree (psutil,
sampled every 50 ms). A generated input of >= --big-gb GB shows that peak memory stays flat.
Writes benchmarks/results/preprocess_<date>T<time>.json (machine, versions, every figure).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CRYSTAL = os.path.join(os.path.dirname(ROOT), "shared", "crystal_tokenizer", "tokenizer.json")

BASELINE = r"""
import json, sys, time
t0 = time.time()
sys.path.insert(0, sys.argv[4])
from megacrystal.data.indexed import IndexedDatasetWriter, token_dtype
from megacrystal.tokenizer import load_tokenizer
tok = load_tokenizer(sys.argv[3], sys.argv[2])
docs = toks = 0
with IndexedDatasetWriter(sys.argv[5], dtype=token_dtype(tok.vocab_size)) as w, open(sys.argv[1], "rb") as f:
    for line in f:
        text = json.loads(line)["text"]
        ids = tok.encode(text) + [tok.eod]
        w.add_document(ids)
        docs += 1; toks += len(ids)
print(json.dumps({"documents": docs, "tokens": toks}))
"""

CEILING = r"""
import json, sys, time
from tokenizers import Tokenizer
texts = [json.loads(l)["text"] for l in open(sys.argv[1], "rb")]
tok = Tokenizer.from_file(sys.argv[2])
fn = getattr(tok, sys.argv[3])
fn(texts[:200], add_special_tokens=False)   # warm-up
t0, c0 = time.time(), time.process_time()
enc = fn(texts, add_special_tokens=False)
dt, cpu = time.time() - t0, time.process_time() - c0
print(json.dumps({"seconds": dt, "cpu_s": cpu, "tokens": sum(len(e.ids) for e in enc), "documents": len(texts)}))
"""


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Wall time and peak RSS (sum over the process tree) of one command."""
    import psutil

    t0 = time.time()
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, env={**os.environ, **(env or {})})
        proc = psutil.Process(p.pid)
        peak = peak_one = 0
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)  # rusage: the child + its waited-for workers
            if pid:
                break
            try:
                rss = [proc.memory_info().rss] + [c.memory_info().rss for c in proc.children(recursive=True)]
            except psutil.Error:
                rss = [0]
            peak, peak_one = max(peak, sum(rss)), max(peak_one, max(rss))
            time.sleep(0.05)
        wall = time.time() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.decode()[-2000:]}")
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        "peak_rss_mb": round(peak / 2**20, 1),
        "peak_rss_one_process_mb": round(peak_one / 2**20, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "stdout": out.decode().strip(),
    }


def make_input(src_dir: str, path: str, target_bytes: int) -> dict:
    """Replicate the local corpus' lines (in order) until the file holds >= target_bytes."""
    lines = []
    for name in sorted(os.listdir(src_dir)):
        if name.endswith(".jsonl"):
            with open(os.path.join(src_dir, name), "rb") as f:
                lines += [l for l in f if l.strip()]
    block = b"".join(lines)
    docs = size = 0
    with open(path, "wb", buffering=16 << 20) as f:
        while size < target_bytes:
            if size + len(block) <= target_bytes:
                f.write(block)
                docs, size = docs + len(lines), size + len(block)
                continue
            for line in lines:
                if size >= target_bytes:
                    break
                f.write(line)
                docs, size = docs + 1, size + len(line)
    return {"path": path, "bytes": size, "documents": docs, "unique_documents": len(lines), "unique_bytes": len(block)}


def figures(r: dict, in_bytes: int, docs: int, tokens: int) -> dict:
    s = r["wall_s"]
    return {
        **{k: v for k, v in r.items() if k != "stdout"},
        "docs_per_s": round(docs / s, 1),
        "mb_per_s": round(in_bytes / s / 1e6, 3),
        "tokens_per_s": round(tokens / s, 1),
        "mb_per_cpu_s": round(in_bytes / r["cpu_s"] / 1e6, 3),
    }


def ours(inp: str, out_prefix: str, kind: str, model: str, workers: int) -> dict:
    r = run_measured(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "preprocess_data.py"),
            "--input",
            inp,
            "--output-prefix",
            out_prefix,
            "--tokenizer-type",
            kind,
            "--tokenizer-model",
            model,
            "--append-eod",
            "--workers",
            str(workers),
            "--no-progress",
        ],
        env={"PYTHONPATH": ROOT},
    )
    with open(out_prefix + "_summary.json") as f:
        s = json.load(f)
    return figures(r, s["input_bytes"], s["documents"], s["tokens"]) | {
        "documents": s["documents"],
        "tokens": s["tokens"],
        "internal_startup_s": s["startup_seconds"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--big-gb", type=float, default=1.0, help="0 skips the large-input memory run")
    ap.add_argument("--tokenizer-model", default=CRYSTAL if os.path.isfile(CRYSTAL) else None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--corpus-mb-per-source", type=float, default=8.0, help="local corpus cap (unique text)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    a = ap.parse_args(argv)
    work = a.workdir or tempfile.mkdtemp(prefix="mc-bench-pre-")
    os.makedirs(work, exist_ok=True)
    import numpy
    import psutil
    import tokenizers

    from data_tools.local_corpus import build_local_corpus

    corpus = build_local_corpus(os.path.join(work, "corpus"), max_mb_per_source=a.corpus_mb_per_source)
    model = a.tokenizer_model
    if model is None:  # no Crystal tokenizer here: train one (SentencePiece) from the corpus
        from data_tools.train_tokenizer import train_tokenizer

        model = train_tokenizer(os.path.join(work, "corpus"), 32000, os.path.join(work, "tok"))
    kind = "HuggingFaceTokenizer" if model.endswith(".json") else "SentencePieceTokenizer"
    inp = make_input(os.path.join(work, "corpus"), os.path.join(work, "input.jsonl"), int(a.mb * 1e6))
    print(f"input: {inp['bytes'] / 1e6:.1f} MB, {inp['documents']} documents; tokenizer {model}", flush=True)

    result = {
        "benchmark": "preprocess",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average_start": os.getloadavg(),
        },
        "versions": {
            "python": platform.python_version(),
            "tokenizers": tokenizers.__version__,
            "numpy": numpy.__version__,
        },
        "tokenizer": {"type": kind, "model": model},
        "corpus": {
            "local_corpus_documents": corpus["documents"],
            "local_corpus_bytes": corpus["text_bytes"],
            **{k: v for k, v in inp.items() if k != "path"},
        },
        "runs": [],
    }
    try:
        import sentencepiece

        result["versions"]["sentencepiece"] = sentencepiece.__version__
    except ImportError:
        pass
    ref_tokens = None
    for rep in range(a.repeats):
        for threads in (1, 2):
            if kind == "HuggingFaceTokenizer":
                for fn in ("encode_batch", "encode_batch_fast"):
                    r = run_measured(
                        [sys.executable, "-c", CEILING, inp["path"], model, fn],
                        env={"RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true"},
                    )
                    c = json.loads(r["stdout"])
                    rec = {
                        "what": f"ceiling_{fn}",
                        "threads": threads,
                        "repeat": rep,
                        "seconds": round(c["seconds"], 3),
                        "cpu_s": round(c["cpu_s"], 3),
                        "mb_per_s": round(inp["bytes"] / c["seconds"] / 1e6, 3),
                        "mb_per_cpu_s": round(inp["bytes"] / c["cpu_s"] / 1e6, 3),
                        "load_average": r["load_average"],
                        "docs_per_s": round(c["documents"] / c["seconds"], 1),
                        "tokens_per_s": round(c["tokens"] / c["seconds"], 1),
                        "peak_rss_mb": r["peak_rss_mb"],
                    }
                    result["runs"].append(rec)
                    print(rec, flush=True)
            r = ours(inp["path"], os.path.join(work, f"ours_w{threads}"), kind, model, threads)
            rec = {"what": "ours", "workers": threads, "repeat": rep, **r}
            result["runs"].append(rec)
            print(rec, flush=True)
            ref_tokens = ref_tokens or r["tokens"]
        if rep == 0:
            r = run_measured(
                [sys.executable, "-c", BASELINE, inp["path"], model, kind, ROOT, os.path.join(work, "baseline")]
            )
            b = json.loads(r["stdout"])
            rec = {
                "what": "baseline_per_document",
                "workers": 1,
                "repeat": rep,
                **figures(r, inp["bytes"], b["documents"], b["tokens"]),
            }
            result["runs"].append(rec)
            print(rec, flush=True)
            same = all(
                open(os.path.join(work, f"ours_w{w}_text_document{e}"), "rb").read()
                == open(os.path.join(work, "baseline" + e), "rb").read()
                for w in (1, 2)
                for e in (".bin", ".idx")
            )
            result["outputs_identical_w1_w2_baseline"] = same
            print("outputs identical (workers 1, 2, baseline):", same, flush=True)

    # start-up: a one-document input, whole process
    tiny = os.path.join(work, "tiny.jsonl")
    with open(tiny, "w") as f:
        f.write(json.dumps({"text": "hello"}) + "\n")
    starts = [ours(tiny, os.path.join(work, "tiny"), kind, model, 2)["wall_s"] for _ in range(3)]
    result["startup_wall_s_one_doc_input"] = min(starts)

    if a.big_gb > 0:
        big = make_input(os.path.join(work, "corpus"), os.path.join(work, "big.jsonl"), int(a.big_gb * 1e9))
        os.remove(inp["path"])
        print(f"big input: {big['bytes'] / 1e9:.2f} GB", flush=True)
        r = ours(big["path"], os.path.join(work, "big"), kind, model, 2)
        result["big_input"] = {"bytes": big["bytes"], "documents": big["documents"], "workers": 2, **r}
        small = [x for x in result["runs"] if x["what"] == "ours" and x["workers"] == 2]
        result["big_input"]["peak_rss_delta_vs_small_mb"] = round(
            r["peak_rss_mb"] - max(x["peak_rss_mb"] for x in small), 1
        )
        print(result["big_input"], flush=True)

    # summary ratios on the best of the repeats
    def best(what, key, val):
        xs = [x for x in result["runs"] if x["what"] == what and x.get(key) == val]
        return max(xs, key=lambda x: x["mb_per_s"]) if xs else None

    summary = {}
    for w in (1, 2):
        o = best("ours", "workers", w)
        c = best("ceiling_encode_batch", "threads", w)
        cf = best("ceiling_encode_batch_fast", "threads", w)
        summary[f"workers_{w}"] = {
            "ours_mb_per_s": o["mb_per_s"],
            "ours_mb_per_cpu_s": o["mb_per_cpu_s"],
            "peak_rss_mb": o["peak_rss_mb"],
        }
        if c:
            cpu = max(x["mb_per_cpu_s"] for x in result["runs"] if x["what"] == "ceiling_encode_batch")
            summary[f"workers_{w}"].update(
                ceiling_encode_batch_mb_per_s=c["mb_per_s"],
                ratio_to_ceiling=round(o["mb_per_s"] / c["mb_per_s"], 3),
                ceiling_encode_batch_fast_mb_per_s=cf["mb_per_s"],
                ratio_to_fast_ceiling=round(o["mb_per_s"] / cf["mb_per_s"], 3),
                ceiling_encode_batch_mb_per_cpu_s=cpu,
                cpu_efficiency_vs_ceiling=round(o["mb_per_cpu_s"] / cpu, 3),
            )
    base = best("baseline_per_document", "workers", 1)
    summary["baseline_per_document_mb_per_s"] = base["mb_per_s"]
    summary["speedup_workers_2_vs_baseline"] = round(summary["workers_2"]["ours_mb_per_s"] / base["mb_per_s"], 2)
    result["summary"] = summary
    result["machine"]["load_average_end"] = os.getloadavg()
    os.makedirs(a.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M")
    path = os.path.join(a.out, f"preprocess_{stamp}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(summary, indent=1))
    print(f"recorded {path}")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
