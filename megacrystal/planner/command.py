"""`megacrystal plan --config C.yaml --gpus N --gpu h100`: every valid layout of a config on N
devices, ranked by the simulated step time, with days and GPU-hours for the whole run.

Each layout's step is composed from the cost of its distinct layer shapes (each rehearsed once on
the meta device and cached: parameters, activations, FLOPs and collective bytes of the real code;
`--cost-source formula` counts them from the shapes instead), timed on the hardware table, with the pipeline simulated from the engine's schedules and the overlaps the
engine has today (docs/planner.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..config import ConfigError, load_config
from . import hardware
from .compose import Plan
from .costs import FORMULA
from .search import plan_layouts, plan_one, recompute_choices_of, recompute_text, total_tokens
from .shapes import ModelShape

GB = 1e9


def count(x: float) -> str:
    for unit, v in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= v:
            return f"{x / v:.3g} {unit}"
    return f"{x:.0f}"


def duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:,.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.1f} minutes"


def row(p: Plan) -> dict:
    lay = p.layout
    return dict(
        layout=lay.label(),
        tp=lay.tp,
        pp=lay.pp,
        vpp=lay.vpp,
        dp=lay.dp,
        mbs=lay.mbs,
        sequence_parallel=lay.sp,
        distributed_optimizer=lay.dist_opt,
        recompute=lay.recompute,
        step_s=p.step_s,
        exact=p.exact,
        tokens_per_s_per_gpu=p.tokens_per_s_per_gpu,
        mfu=p.mfu if p.exact else None,
        memory_gb=p.memory_bytes / GB,
        memory_source="formula" if p.sources.get("memory", "").startswith("formula") else "rehearsal",
        memory_parts_gb={k: v / GB for k, v in p.memory.items()},
        fits=p.fits,
        exposed_comm_s=p.exposed_comm_s if p.exact else None,
        bubble=p.bubble if p.exact else None,
    )


def explain(p: Plan) -> str:
    lay = p.layout
    out = [f"{lay.label()}: {p.step_s:.3f} s per step, {p.tokens_per_s_per_gpu:,.0f} tok/s/GPU, MFU {p.mfu:.3f}"]
    comp = sum(p.compute.values())
    out.append(f"compute on the critical pipeline rank, by op class ({p.sources['flops']}):")
    for k, v in sorted(p.compute.items(), key=lambda kv: -kv[1]):
        out.append(f"  {k:<12} {v:8.3f} s  {v / p.step_s:6.1%} of the step")
    out.append(f"  {'total':<12} {comp:8.3f} s")
    out.append("collectives (each: total time, exposed on the critical path, hidden behind compute):")
    for c in sorted(p.collectives, key=lambda c: -c["exposed_s"]):
        hid = max(0.0, c["total_s"] - c["exposed_s"])
        out.append(
            f"  {c['name']:<36} {c['group']:<9} {c['algo']:<5} {c['total_s']:8.3f} s  exposed {c['exposed_s']:7.3f}"
            f"  hidden {hid:7.3f}"
        )
        if c.get("where"):
            out.append(f"      {c['where']}")
    out.append(f"pipeline bubble (idle share of the step, from the simulation): {p.bubble:.3f}")
    recs = p.sources.get("records", {})
    for part, r in recs.items():
        ratios = ", ".join(f"{k} x{v:.3f}" for k, v in sorted(r.get("ratios", {}).items()))
        if r.get("source") == "rehearsal":
            out.append(f"{part} record: rehearsal ({r.get('seconds', 0):.1f} s), measured / formula: {ratios or '-'}")
        else:
            out.append(f"{part} record: {r.get('source')}")
    out.append(f"memory per GPU, pipeline rank {p.memory_rank} ({p.sources['memory']}):")
    for k, v in p.memory.items():
        out.append(f"  {k:<13} {v / GB:7.2f} GB")
    out.append(f"  {'total':<13} {p.memory_bytes / GB:7.2f} GB ({'fits' if p.fits else 'does not fit'})")
    return "\n".join(out)


def _gb(p: Plan) -> str:
    mark = "*" if p.sources.get("memory", "").startswith("formula") else " "
    return f"{p.memory_bytes / GB:6.1f}{mark}"


def main(argv=None, sources: dict | None = None) -> int:
    """The command; `sources`: cost sources by name (a factory of the config and hardware each), the first the
    default. `megacrystal plan` (megacrystal/plan_cli.py) gives the rehearsal's and the formula."""
    sources = sources or {"formula": lambda cfg, hw: FORMULA}
    ap = argparse.ArgumentParser(prog="megacrystal plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the run config (YAML) to plan")
    ap.add_argument("--gpus", type=int, required=True, help="number of devices (world size)")
    ap.add_argument("--gpu", default="h100", choices=hardware.names(), help="device from the hardware table")
    ap.add_argument("--hardware", metavar="FILE", help="a YAML/JSON hardware file instead of --gpu (docs/planner.md)")
    ap.add_argument("--nodes-of", type=int, metavar="N", help="devices per node (default: the hardware's, 8 for GPUs)")
    ap.add_argument(
        "--explain", metavar="LAYOUT", help="break one layout down: a label from the table or its rank (1 = best)"
    )
    ap.add_argument("--json", action="store_true", help="print every layout as JSON")
    ap.add_argument("--top", type=int, default=15, help="layouts to print (default 15)")
    ap.add_argument("--config-layout", action="store_true", help="cost only the config's own layout")
    ap.add_argument(
        "--cost-source",
        choices=tuple(sources),
        default=next(iter(sources)),
        help="where per-layer memory, FLOPs and collective bytes come from: the real code rehearsed on meta once "
        "per layer shape and cached (default), or a formula from the shapes (the fallback)",
    )
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (key=value)")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides, validate=False)
        hw = hardware.load_file(a.hardware) if a.hardware else hardware.get(a.gpu)
        hw = hardware.with_nodes_of(hw, a.nodes_of)
        if a.gpus < 1:
            raise ConfigError(f"--gpus: expected a positive integer, got {a.gpus}")
        source = sources[a.cost_source](cfg, hw)
        t0 = time.perf_counter()
        plans, rejected = plan_layouts(cfg, a.gpus, hw, base=a.config_layout, source=source)
        elapsed = time.perf_counter() - t0
    except ConfigError as e:
        print(f"megacrystal plan: {e}", file=sys.stderr)
        return 2
    if not plans:
        why = ", ".join(f"{k} ({v})" for k, v in sorted(rejected.items())) or "none"
        print(
            f"megacrystal plan: no valid layout of {a.config} on {a.gpus} devices (rejected by: {why})", file=sys.stderr
        )
        return 2
    steps, tokens = total_tokens(cfg)
    best = next((p for p in plans if p.fits), None)
    if a.explain:
        pick = [p for p in plans if p.layout.label() == a.explain]
        if not pick and a.explain.isdigit() and 1 <= int(a.explain) <= len(plans):
            pick = [plans[int(a.explain) - 1]]
        if not pick:
            print(
                f"megacrystal plan: --explain {a.explain}: no such layout (give a label from the table or a rank)",
                file=sys.stderr,
            )
            return 2
        p = pick[0]
        if not p.exact:
            p = plan_one(cfg, p.layout, hw, source=source)
        print(explain(p))
        print("\n".join(recompute_text(recompute_choices_of(cfg, p.layout, hw, source))))
        return 0
    if a.json:
        doc = dict(
            config=a.config,
            gpus=a.gpus,
            hardware=dict(
                key=hw.key, name=hw.name, gpus_per_node=hw.gpus_per_node, roofline_defaults=list(hw.defaulted)
            ),
            sources=plans[0].sources,
            run=dict(steps=steps, tokens=tokens),
            best=row(best) if best else None,
            best_days=best.step_s * steps / 86400 if best else None,
            best_gpu_hours=best.step_s * steps / 3600 * a.gpus if best else None,
            rejected=rejected,
            layouts=[row(p) for p in plans],
        )
        print(json.dumps(doc, indent=1))
        return 0
    m = ModelShape.from_config(cfg.model)
    print(
        f"{count(m.total_params(1))} parameters (as executed), seq {cfg.data.seq_length}, global batch "
        f"{cfg.train.global_batch_size} ({count(cfg.train.global_batch_size * cfg.data.seq_length)} tokens/step), "
        f"{a.gpus} x {hw.name}, {hw.gpus_per_node} per node"
    )
    print(f"costs: FLOPs from {source.flops_from}; memory from {source.memory_from}")
    if getattr(source, "measured", False):
        print(
            f"  {source.rehearsed} layer shape(s) rehearsed now, {len(source.pieces) - source.rehearsed} from the cache "
            f"({source.cache}); planned in {elapsed:.1f} s"
        )
    if hw.defaulted:
        print(f"roofline fallback for: {', '.join(hw.defaulted)}")
    n_rej = sum(rejected.values())
    print(
        f"{len(plans)} valid layouts ({n_rej} rejected: "
        + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
        + f"); {sum(p.exact for p in plans)} simulated in full, the rest are behind them by a lower bound (>=)"
    )
    print(
        f"{'#':>3} {'layout':<40} {'step s':>8} {'tok/s/GPU':>10} {'MFU':>6} {'GB/GPU':>7} {'fits':>4} {'exp. comm s':>11} {'bubble':>6}"
    )
    for i, p in enumerate(plans[: a.top], 1):
        if p.exact:
            tail = f"{p.mfu:6.3f} {_gb(p)} {'yes' if p.fits else 'no':>4} {p.exposed_comm_s:11.3f} {p.bubble:6.3f}"
            step = f"{p.step_s:8.3f}"
        else:
            tail = f"{'':>6} {_gb(p)} {'yes' if p.fits else 'no':>4} {'':>11} {'':>6}"
            step = f">={p.step_s:6.3f}"
        print(f"{i:>3} {p.layout.label():<40} {step} {p.tokens_per_s_per_gpu:10,.0f} {tail}")
    if any(row(p)["memory_source"] == "formula" for p in plans[: a.top]) and getattr(source, "measured", False):
        print("  * memory from the formula: layouts behind the simulated ones by their bound are not rehearsed")
    if best:
        secs = best.step_s * steps
        print(
            f"whole run: {len(cfg.data.phases)} phase(s), {steps:,} steps, {count(tokens)} tokens: "
            f"{duration(secs)} and {secs / 3600 * a.gpus:,.1f} GPU-hours on {best.layout.label()}"
        )
    else:
        print("no layout fits in memory; see the GB/GPU column")
    return 0
