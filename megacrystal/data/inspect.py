"""`megacrystal data-inspect --config C.yaml [--json] [--decode N] [dotted.key=value ...]`

Per phase: steps, samples, tokens; per blend entry (a source, or a replay of an earlier phase's
range) the requested and realised weight (and the difference in samples), its samples and tokens,
the epochs it reads (of the source's training data; of the replayed range for a replay), its FIM
rate and the FIM share measured over its first samples (documents transformed); per source the
epochs its index holds over all phases. `--decode N` prints the first N samples of each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

FIM_PROBE = 128  # samples per FIM entry over which its FIM share is measured


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
        counts = np.bincount(np.asarray(src), minlength=len(p.entries))
        srcs = {}
        for i, e in enumerate(p.entries):
            n = int(counts[i])
            row = {
                "requested_weight": float(p.weights[i]),
                "realised_weight": n / p.num_samples,
                "samples": n,
                "tokens": n * S,
                "off_by_samples": n - float(p.weights[i]) * p.num_samples,
                "epochs_read": n * S / max(1, plan.sources[e.source].train_tokens),
                "kind": plan.sources[e.source].kind,
                "source": e.source,
                "fim_rate": e.fim_rate,
                "fim_spm_rate": e.fim_spm_rate,
            }
            if e.replay is not None:
                a, b = ds.replays[p.index][e.name]
                row["replay"] = {"phase": e.replay.phase_name, "start": e.replay.start, "end": e.replay.end}
                row["replay_samples"] = b - a  # the range's size; epochs are passes over it
                row["epochs_read"] = n / (b - a)
            row.update(_fim_share(ds, p.index, i, n))
            srcs[e.name] = row
        for s, w in p.requested.items():
            if s not in srcs:
                srcs[s] = {
                    "requested_weight": w,
                    "realised_weight": 0.0,
                    "samples": 0,
                    "tokens": 0,
                    "off_by_samples": 0.0,
                    "epochs_read": 0.0,
                    "kind": plan.sources[s].kind if s in plan.sources else "",
                    "fim_rate": 0.0,
                    "fim_share": 0.0,
                    "fim_pieces_probed": 0,
                    "left_out": "empty optional source",
                }
        code_share = sum(v["samples"] for v in srcs.values() if v["kind"] == "code") / p.num_samples
        pieces = sum(v["fim_pieces_probed"] for v in srcs.values())
        fim_pieces = sum(v["fim_share"] * v["fim_pieces_probed"] for v in srcs.values())
        entry = {
            "name": p.name,
            "steps": p.steps,
            "samples": p.num_samples,
            "tokens": p.num_samples * S,
            "first_step": p.start // plan.global_batch_size,
            "fim_rate": p.fim_rate,
            "fim_spm_rate": p.fim_spm_rate,
            "code_share": code_share,
            # expected share of the phase's samples that are read with FIM on (a rate > 0)
            "fim_sample_share": sum(v["samples"] for v in srcs.values() if v["fim_rate"] > 0) / p.num_samples,
            # measured: documents transformed over the pieces probed in the FIM entries
            "fim_share": fim_pieces / pieces if pieces else 0.0,
            "fim_pieces_probed": pieces,
            "sources": srcs,
        }
        if decode and tok is not None:
            entry["decoded"] = [_decode(ds, tok, g) for g in range(p.start, min(p.end, p.start + decode))]
        out["phases"].append(entry)
    return out


def _fim_share(ds, p: int, i: int, n: int) -> dict:
    """Share of document pieces transformed over the first FIM_PROBE samples of entry i of phase p."""
    e = ds.plan.phases[p].entries[i]
    if ds.fim is None or not e.fim:
        return {"fim_share": 0.0, "fim_pieces_probed": 0}
    pieces = fim = 0
    for c in range(min(n, FIM_PROBE)):
        _, _, _, report = ds.raw_at(ds.entry_sample(p, i, c))
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
            f"read with FIM {p['fim_sample_share']:.1%} of samples, FIM share of their documents "
            f"{p['fim_share']:.1%} over {p['fim_pieces_probed']} pieces"
        )
        lines.append(
            f"  {'entry':<26}{'kind':<6}{'requested':>10}{'realised':>10}{'samples':>11}{'off by':>8}"
            f"{'tokens':>18}{'epochs':>9}{'fim':>6}{'fim share':>10}"
        )
        for name, v in p["sources"].items():
            note = f"  ({v['left_out']})" if "left_out" in v else ""
            if "replay" in v:
                r = v["replay"]
                note = f"  replays {r['start']:g}..{r['end']:g} of {r['phase']}'s {v['source']} ({v['replay_samples']} samples)"
            share = f"{v['fim_share']:>10.1%}" if v["fim_pieces_probed"] else f"{'-':>10}"
            lines.append(
                f"  {name:<26}{v['kind']:<6}{v['requested_weight']:>10.6f}{v['realised_weight']:>10.6f}"
                f"{v['samples']:>11}{v['off_by_samples']:>8.2f}{v['tokens']:>18,}{v['epochs_read']:>9.3f}"
                f"{v['fim_rate']:>6.2g}{share}{note}"
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
            f"  {name:<26}{v['kind']:<6}{v['train_tokens']:>16,} train tokens, {v['samples_built']:>9} "
            f"samples built, up to {epochs} epochs, {len(v['files'])} file(s)"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    from ..config import ConfigError, load_config

    ap = argparse.ArgumentParser(prog="megacrystal data-inspect", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a run config (YAML)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--decode", type=int, default=0, metavar="N", help="show the first N samples of each phase")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the config")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides)
        s = summarize(cfg, a.decode)
    except (ConfigError, ValueError) as e:
        print(f"megacrystal data-inspect: {e}", file=sys.stderr)
        return 2
    print(json.dumps(s, indent=1) if a.json else render(s))
    return 0
