"""examples/crystal_7b.yaml through data-inspect on stand-in corpora, figures scaled back to the full run.

    python benchmarks/crystal_recipe.py [--seq-length 64] [--global-batch-size 1] [--tokenizer-model PATH]

The stand-ins (tests/data/crystal_standin.py) have the recipe's relative sizes at a reduced scale:
the run keeps its steps and weights with `--global-batch-size` samples of `--seq-length` tokens per
step, the corpora shrink by the same factor, so epochs are the full run's and tokens x scale are.
Prints per phase and blend entry: tokens (B, full scale), realised vs released weight, epochs, FIM
rate and measured FIM share; writes benchmarks/results/crystal-recipe-<date>.json (machine, versions).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RELEASED_TOKENS_B = {"phase1": 344.8, "phase2": 927.3, "phase3": 119.9}


def main() -> None:
    from megacrystal.config import load_config
    from megacrystal.data import inspect as inspect_mod
    from megacrystal.tokenizer import load_tokenizer
    from tests.data import crystal_standin
    from tests.data_helpers import CRYSTAL_TOKENIZER

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-length", type=int, default=64)
    ap.add_argument("--global-batch-size", type=int, default=1)
    ap.add_argument("--tokenizer-model", default=str(CRYSTAL_TOKENIZER), help="Crystal's tokenizer.json")
    a = ap.parse_args()
    tok = load_tokenizer("HuggingFaceTokenizer", a.tokenizer_model)
    with open(crystal_standin.RECIPE) as f:
        recipe = yaml.safe_load(f)
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        overrides, scale = crystal_standin.build(root, tok, a.seq_length, a.global_batch_size)
        t1 = time.perf_counter()
        s = inspect_mod.summarize(load_config(crystal_standin.RECIPE, overrides))
        t2 = time.perf_counter()
    phases = []
    for p, cfg in zip(s["phases"], recipe["data"]["phases"], strict=True):
        released = {k: (v["weight"] if isinstance(v, dict) else v) for k, v in cfg["blend"].items()}
        tokens_b = p["tokens"] * scale / 1e9
        print(
            f"\n{p['name']}: {p['steps']} steps, {tokens_b:.1f} B tokens (released {RELEASED_TOKENS_B[p['name']]} B), "
            f"code {p['code_share']:.1%}, read with FIM {p['fim_sample_share']:.1%}"
        )
        print(f"  {'entry':<26}{'tokens (B)':>11}{'weight':>10}{'released':>10}{'epochs':>8}{'fim':>6}{'share':>8}")
        rows = {}
        for name, v in p["sources"].items():
            rows[name] = dict(
                tokens_b=v["tokens"] * scale / 1e9,
                realised_weight=v["realised_weight"],
                released_weight=released[name],
                epochs=v["epochs_read"],
                fim_rate=v["fim_rate"],
                fim_share=v["fim_share"],
                fim_pieces_probed=v["fim_pieces_probed"],
                **({"replay": v["replay"], "replay_samples": v["replay_samples"]} if "replay" in v else {}),
            )
            share = f"{v['fim_share']:>8.1%}" if v["fim_pieces_probed"] else f"{'-':>8}"
            print(
                f"  {name:<26}{rows[name]['tokens_b']:>11.2f}{v['realised_weight']:>10.6f}{released[name]:>10.6f}"
                f"{v['epochs_read']:>8.3f}{v['fim_rate']:>6.2g}{share}"
            )
        phases.append(
            dict(name=p["name"], steps=p["steps"], tokens_b=tokens_b, released_tokens_b=RELEASED_TOKENS_B[p["name"]])
            | dict(code_share=p["code_share"], fim_sample_share=p["fim_sample_share"], entries=rows)
        )
    print(f"\nstand-ins built in {t1 - t0:.1f} s, data-inspect {t2 - t1:.1f} s (scale 1/{scale:,.0f})")
    out = {
        "benchmark": "crystal_recipe",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "versions": {"python": platform.python_version(), "numpy": np.__version__},
        "seq_length": a.seq_length,
        "global_batch_size": a.global_batch_size,
        "scale": scale,
        "seconds": {"build": t1 - t0, "inspect": t2 - t1},
        "phases": phases,
    }
    path = os.path.join(ROOT, "benchmarks", "results", f"crystal-recipe-{datetime.date.today().isoformat()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    print(f"wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
