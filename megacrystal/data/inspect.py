"""`megacrystal data-inspect --config C.yaml [--json] [--decode N] [dotted.key=value ...]`

Per phase: steps, samples, tokens; per source the requested and realised weight (and the
difference in samples), the samples it gives, the epochs of its training data this phase reads
and its index holds over all phases; the FIM share (of code documents transformed, measured over
the phase's first samples). `--decode N` prints the first N samples of each phase as text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

FIM_PROBE = 256  # samples per phase over which the FIM share is measured


def summarize(cfg, decode: int = 0) -> dict:
    from ..tokenizer import load_tokenizer
    from .phases import PhasedDataset
    from .plan import make_plan

    d = cfg.data
    plan = make_plan(cfg)
    tok = load_tokenizer(d.tokenizer_type, d.tokenizer_model) if d.tokenizer_model else None
    cache_dir = d.cache_dir or os.path.join(cfg.train.out_dir, "index_cache")
    ds = PhasedDataset(plan, cache_dir, tokenizer=tok)
    S = plan.seq_length
    out = {
        "seq_length": S,
        "global_batch_size": plan.global_batch_size,
        "total_steps": plan.total_steps,
        "total_samples": plan.total_samples,
        "total_tokens": plan.total_samples * S,
        "phases": [],
        "sources": {},
    }
    for name, sp in plan.sources.items():
        out["sources"][name] = {
            "kind": sp.kind,
            "train_tokens": sp.train_tokens,
            "samples_built": sp.demand,
            "files": [
                {
                    "prefix": f.prefix,
                    "weight": f.weight,
                    "train_documents": len(f.train_documents),
                    "valid_documents": len(f.valid_documents),
                    "train_tokens": f.train_tokens,
                    "samples_built": f.demand,
                    "epochs_built": f.epochs,
                }
                for f in sp.files
            ],
        }
    for p, (src, _) in zip(plan.phases, ds.phase_arrays, strict=True):
        counts = np.bincount(np.asarray(src), minlength=len(p.sources))
        srcs = {}
        for i, s in enumerate(p.sources):
            n = int(counts[i])
            srcs[s] = {
                "requested_weight": float(p.weights[i]),
                "realised_weight": n / p.num_samples,
                "samples": n,
                "off_by_samples": n - float(p.weights[i]) * p.num_samples,
                "epochs_read": n * S / max(1, plan.sources[s].train_tokens),
                "kind": plan.sources[s].kind,
            }
        for s, w in p.requested.items():
            if s not in srcs:
                srcs[s] = {
                    "requested_weight": w,
                    "realised_weight": 0.0,
                    "samples": 0,
                    "off_by_samples": 0.0,
                    "epochs_read": 0.0,
                    "kind": plan.sources[s].kind,
                    "left_out": "empty optional source",
                }
        code_share = sum(v["samples"] for v in srcs.values() if v["kind"] == "code") / p.num_samples
        entry = {
            "name": p.name,
            "steps": p.steps,
            "samples": p.num_samples,
            "tokens": p.num_samples * S,
            "first_step": p.start // plan.global_batch_size,
            "fim_rate": p.fim_rate,
            "fim_spm_rate": p.fim_spm_rate,
            "code_share": code_share,
            "sources": srcs,
        }
        entry.update(_fim_share(ds, p))
        if decode and tok is not None:
            entry["decoded"] = [_decode(ds, tok, g) for g in range(p.start, min(p.end, p.start + decode))]
        out["phases"].append(entry)
    return out


def _fim_share(ds, p) -> dict:
    if ds.fim is None or p.fim_rate == 0:
        return {"fim_share": 0.0, "fim_pieces_probed": 0}
    pieces = fim = 0
    for g in range(p.start, min(p.end, p.start + FIM_PROBE)):
        _, _, _, report = ds.raw(g)
        if report is not None:
            pieces += len(report)
            fim += sum(r.mode != "none" for r in report)
    return {"fim_share": fim / pieces if pieces else 0.0, "fim_pieces_probed": pieces}


def _decode(ds, tok, g: int) -> dict:
    tokens, parts, loc, report = ds.raw(g)
    modes = [r.mode for r in report] if report else ["none"] * len(parts)
    return {
        "sample": g,
        "source": loc.source,
        "pieces": len(modes),
        "fim": [m for m in modes if m != "none"],
        "text": tok.decode(tokens.tolist()),
    }


def render(s: dict) -> str:
    lines = [
        f"{s['total_steps']} steps x {s['global_batch_size']} samples of {s['seq_length']} tokens = "
        f"{s['total_samples']} samples, {s['total_tokens']:,} tokens"
    ]
    for p in s["phases"]:
        lines.append("")
        lines.append(
            f"phase {p['name']}: steps {p['first_step']}..{p['first_step'] + p['steps'] - 1} "
            f"({p['steps']}), {p['samples']} samples, {p['tokens']:,} tokens, code {p['code_share']:.1%}, "
            f"fim_rate {p['fim_rate']} (spm {p['fim_spm_rate']}), FIM share of code documents "
            f"{p['fim_share']:.1%} over {p['fim_pieces_probed']} pieces"
        )
        lines.append(
            f"  {'source':<18}{'kind':<6}{'requested':>10}{'realised':>10}{'samples':>10}{'off by':>8}{'epochs':>9}"
        )
        for name, v in p["sources"].items():
            note = f"  ({v['left_out']})" if "left_out" in v else ""
            lines.append(
                f"  {name:<18}{v['kind']:<6}{v['requested_weight']:>10.4f}{v['realised_weight']:>10.4f}"
                f"{v['samples']:>10}{v['off_by_samples']:>8.2f}{v['epochs_read']:>9.3f}{note}"
            )
        for dec in p.get("decoded", []):
            fim = f", FIM {'/'.join(dec['fim'])}" if dec["fim"] else ""
            lines.append(f"  --- sample {dec['sample']} ({dec['source']}, {dec['pieces']} pieces{fim})")
            lines.append("  " + dec["text"].replace("\n", "\n  "))
    lines.append("")
    lines.append("sources (indices built over all phases):")
    for name, v in s["sources"].items():
        epochs = max((f["epochs_built"] for f in v["files"]), default=0)
        lines.append(
            f"  {name:<18}{v['kind']:<6}{v['train_tokens']:>14,} train tokens, {v['samples_built']:>9} "
            f"samples built, up to {epochs} epochs, {len(v['files'])} file(s)"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    from ..config import ConfigError, load_config

    ap = argparse.ArgumentParser(prog="megacrystal data-inspect", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--decode", type=int, default=0, metavar="N", help="show the first N samples of each phase")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides)
        s = summarize(cfg, a.decode)
    except (ConfigError, ValueError) as e:
        print(f"megacrystal data-inspect: {e}", file=sys.stderr)
        return 2
    print(json.dumps(s, indent=1) if a.json else render(s))
    return 0
