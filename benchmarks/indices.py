"""Index-building benchmark (TARGETS.md, P7) and loader throughput.

    python benchmarks/indices.py                 # the anchor: 5 M documents, 100 M samples, seq 2048
    python benchmarks/indices.py --docs 500000 --samples 10000000   # smaller
    python benchmarks/indices.py --check-only    # small sizes, equality with megatron-core only

In one process, on the same inputs: megatron-core 0.16.1 (numpy RandomState shuffles + its C++
helpers) against ours (native legacy-RandomState shuffle, native sample index and blending):
document-index shuffle, sample index, sample shuffle, 7-source blend; the arrays are compared for
equality. Then the cached restart (the same indices memory-mapped back through the cache) and the
loader's samples/s of seq+1 tokens in one process (= per DataLoader worker), without and with FIM.
Writes benchmarks/results/indices-<date>.json (machine, versions, figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLEND7 = [0.5335, 0.2665, 0.0496, 0.0433, 0.0413, 0.0342, 0.0317]  # Crystal phase 1


def lognormal_sizes(n: int, mean: float, seed: int = 0) -> np.ndarray:
    sigma = 1.0
    mu = np.log(mean) - sigma**2 / 2
    return np.clip(np.random.default_rng(seed).lognormal(mu, sigma, n), 1, 200_000).astype(np.int32)


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def megatron_builders() -> dict:
    """megatron-core's four builders, in the call shapes `build_all` uses."""
    from megatron.core.datasets import helpers
    from megatron.core.datasets.gpt_dataset import _build_document_index, _build_shuffle_index
    from megatron.core.datasets.utils import normalize

    def blend(weights, size):
        w = np.array(normalize(weights))
        src, idx = np.zeros(size, dtype=np.int16), np.zeros(size, dtype=np.int64)
        helpers.build_blending_indices(src, idx, w, len(w), size, False)
        return src, idx

    return dict(
        document=_build_document_index,
        sample=lambda sizes, doc, seq, epochs, tokens: helpers.build_sample_idx(
            sizes, doc, seq, epochs, tokens, True, True
        ),
        shuffle=_build_shuffle_index,
        blend=blend,
    )


def our_builders() -> dict:
    from megacrystal.data import blended as B
    from megacrystal.data import gpt_dataset as G

    return dict(
        document=G.build_document_index, sample=G.build_sample_index, shuffle=G.build_shuffle_index, blend=B.build_blend
    )


def build_all(builders: dict, sizes, seq, samples, seed, blend_size):
    """The same steps in the same RandomState order for either implementation, each step timed."""
    from megacrystal.data import gpt_dataset as G

    docs = np.arange(len(sizes), dtype=np.int32)
    tokens = int(sizes.sum(dtype=np.int64))
    epochs = G.num_epochs(tokens, samples, seq)
    separate = G.separate_final_epoch(tokens, samples, seq)
    rs = np.random.RandomState(seed)
    t = {}
    doc_idx, t["document_shuffle"] = timed(builders["document"], docs, epochs, rs, separate)
    sample_idx, t["sample_index"] = timed(builders["sample"], sizes, doc_idx, seq, epochs, tokens)
    rows = sample_idx.shape[0] - 1
    first = G.samples_in(epochs - 1, tokens, seq) if separate else rows
    shuffle_idx, t["sample_shuffle"] = timed(builders["shuffle"], first, rows, rs)
    (src, idx), t["blend"] = timed(builders["blend"], BLEND7, blend_size)
    t["total"] = sum(t.values())
    return (doc_idx, sample_idx, shuffle_idx, src, idx), t, {"epochs": epochs, "separate_final_epoch": separate}


def _best(runs: list[dict]) -> dict:
    best = {k: min(r[k] for r in runs) for k in runs[0] if k != "total"}
    best["total"] = sum(best.values())
    return best


def sparse_dataset(prefix: str, sizes: np.ndarray) -> str:
    """An indexed file with these sequence lengths; the .bin is sparse (the index build never reads it)."""
    from megacrystal.data.indexed import write_index

    write_index(prefix + ".idx", np.uint16, sizes, np.arange(len(sizes) + 1, dtype=np.int64))
    with open(prefix + ".bin", "wb") as f:
        f.truncate(int(sizes.sum(dtype=np.int64)) * 2)
    return prefix


def cached_restart(tmp: str, sizes, seq, samples, seed, blend_size) -> dict:
    """Build through the cache once, then time loading it back: in-process and in a fresh interpreter."""
    from megacrystal.data.gpt_dataset import GPTIndex
    from megacrystal.data.indexed import IndexedDataset
    from megacrystal.data.phases import cached_blend

    prefix = sparse_dataset(os.path.join(tmp, "anchor"), sizes)
    cache = os.path.join(tmp, "cache")
    docs = np.arange(len(sizes), dtype=np.int32)
    _, first = timed(
        lambda: (
            GPTIndex(IndexedDataset(prefix), docs, seq, samples, seed, cache),
            cached_blend(BLEND7, blend_size, cache, None, "bench"),
        )
    )
    _, again = timed(
        lambda: (
            GPTIndex(IndexedDataset(prefix), docs, seq, samples, seed, cache),
            cached_blend(BLEND7, blend_size, cache, None, "bench"),
        )
    )
    code = (
        f"import sys,time; t=time.perf_counter(); sys.path.insert(0,{str(ROOT)!r}); import numpy as np\n"
        f"from megacrystal.data.gpt_dataset import GPTIndex\nfrom megacrystal.data.indexed import IndexedDataset\n"
        f"from megacrystal.data.phases import cached_blend\n"
        f"ix=GPTIndex(IndexedDataset({prefix!r}), np.arange({len(sizes)}, dtype=np.int32), {seq}, {samples}, "
        f"{seed}, {cache!r})\ncached_blend({BLEND7!r}, {blend_size}, {cache!r}, None, 'bench')\n"
        f"ix.sample(len(ix)-1); print(time.perf_counter()-t)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {
        "first_build_with_cache_write_s": first,
        "cached_restart_in_process_s": again,
        "cached_restart_fresh_interpreter_s": float(r.stdout.strip().splitlines()[-1]),
    }


def loader_throughput(tmp: str, seq: int, seconds: float = 6.0) -> dict:
    """Samples/s (seq+1 tokens each) of the loader in one process, plain and with FIM 0.9 (real tokenizer)."""
    from megacrystal.config import from_dict
    from megacrystal.data.loader import build_data
    from megacrystal.tokenizer import load_tokenizer

    tok_path = "/work/shared/crystal_tokenizer/tokenizer.json"
    sys.path.insert(0, str(ROOT / "tests"))
    if not os.path.isfile(tok_path):
        from tests.data.corpus import code_texts, train_tokenizer

        tok_path = train_tokenizer(os.path.join(tmp, "tok.json"), code_texts())
    tok = load_tokenizer(None, tok_path)
    from tests.data.corpus import code_texts, write_corpus

    texts = code_texts(limit=200, max_chars=20000)
    prefixes = write_corpus(tmp, {"code": texts * 4}, tok)
    out = {"tokenizer": tok_path}
    for label, rate in (("plain", 0.0), ("fim_0.9", 0.9)):
        cfg = from_dict(
            {
                "model": {"preset": "crystal-1b"},
                "train": {"micro_batch_size": 8, "global_batch_size": 64, "out_dir": os.path.join(tmp, label)},
                "data": {
                    "tokenizer_type": tok.kind,
                    "tokenizer_model": tok_path,
                    "seq_length": seq,
                    "max_epochs": 100000,
                    "sources": {"code": {"prefixes": [prefixes["code"]], "kind": "code", "fim": True}},
                    "phases": [{"name": "p", "steps": 400, "blend": {"code": 1}, "fim_rate": rate}],
                },
            }
        )
        plan, loader, _ = build_data(cfg, with_validation=False)
        n, t0 = 0, time.perf_counter()
        for step in loader:
            n += sum(mb["tokens"].shape[0] for mb in step)
            if time.perf_counter() - t0 > seconds:
                break
        out[f"samples_per_s_{label}"] = n / (time.perf_counter() - t0)
    return out


def versions() -> dict:
    import importlib.metadata as md

    v = {"python": platform.python_version(), "numpy": np.__version__}
    for p in ("megatron-core", "torch"):
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            v[p] = None
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=5_000_000)
    ap.add_argument("--mean-length", type=float, default=660.0)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=100_000_000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--no-loader", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    if a.check_only:
        a.docs, a.samples, a.repeat = 20_000, 400_000, 1
    from megacrystal.compiled import native

    if native.get() is None:
        print("native helpers not built: run `python setup.py build_ext --inplace` first", file=sys.stderr)
        return 2
    sizes = lognormal_sizes(a.docs, a.mean_length)
    print(
        f"{a.docs:,} documents, {int(sizes.sum(dtype=np.int64)):,} tokens, seq {a.seq}, {a.samples:,} samples, "
        f"7-source blend of {a.samples:,}",
        flush=True,
    )
    runs_ref, runs_ours = [], []
    equal = True
    for rep in range(a.repeat):  # alternate, keep each step's fastest run: the machine is shared
        ref, t, info = build_all(megatron_builders(), sizes, a.seq, a.samples, a.seed, a.samples)
        runs_ref.append(t)
        print(f"megatron-core run {rep}:", {k: round(v, 2) for k, v in t.items()}, info, flush=True)
        got, t, _ = build_all(our_builders(), sizes, a.seq, a.samples, a.seed, a.samples)
        runs_ours.append(t)
        print(f"megacrystal   run {rep}:", {k: round(v, 2) for k, v in t.items()}, flush=True)
        equal = equal and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(ref, got, strict=True))
        del ref, got
    print("arrays equal:", equal, flush=True)
    t_ref, t_ours = _best(runs_ref), _best(runs_ours)
    result = {
        "benchmark": "indices",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_at_start": os.getloadavg(),
        },
        "versions": versions(),
        "inputs": {
            "documents": a.docs,
            "tokens": int(sizes.sum(dtype=np.int64)),
            "length": "lognormal",
            "mean_length": a.mean_length,
            "seq_length": a.seq,
            "samples": a.samples,
            "blend_sources": len(BLEND7),
            "blend_size": a.samples,
            **info,
        },
        "timing": f"per step, the fastest of {a.repeat} alternating runs",
        "megatron_core_s": t_ref,
        "megacrystal_s": t_ours,
        "arrays_equal": bool(equal),
        "runs": {"megatron_core": runs_ref, "megacrystal": runs_ours},
        "speedup_total": t_ref["total"] / t_ours["total"],
    }
    if not a.check_only:
        with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
            result["cache"] = cached_restart(tmp, sizes, a.seq, a.samples, a.seed, a.samples)
            print("cache:", result["cache"], flush=True)
        if not a.no_loader:
            with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
                result["loader"] = loader_throughput(tmp, a.seq)
                print("loader:", result["loader"], flush=True)
    print(f"speedup (megatron-core time / ours): {result['speedup_total']:.2f}x")
    if not equal:
        print("ERROR: arrays differ", file=sys.stderr)
        return 1
    if not a.check_only:
        os.makedirs(a.out, exist_ok=True)
        path = os.path.join(a.out, f"indices-{datetime.date.today().isoformat()}.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        print("recorded", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
