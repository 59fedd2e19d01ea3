"""`megacrystal study --config examples/study.yaml`: the curriculum study in one command.

    megacrystal study --config examples/study.yaml              # train + eval what is missing, then compare
    megacrystal study --config examples/study.yaml --dry-run    # write the variant configs, show their tokens
    megacrystal study --config examples/study_7b.yaml --dry-run --plan-gpus 256 --gpu h100   # cost at scale

Writes OUT/configs/<variant>.yaml (and one per seed; `megacrystal data-inspect --config` shows their
per-source tokens), trains OUT/<variant>/seed<N>/ with `megacrystal train`, evaluates every checkpoint
each run kept with `megacrystal eval --all`, and runs `megacrystal compare --trajectory` over all runs
into OUT/compare/ (final table, validation curves, and each curriculum's trajectory).
OUT/study.json records the wall time, the parallel jobs, the cores and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from ..atomic_io import atomic_write
from ..config import ConfigError, load_config
from ..log import get_logger
from ..planner.hardware import names as hardware_names
from .jobs import Job, run_jobs
from .spec import read_spec
from .variants import source_totals, variant_config

log = get_logger("megacrystal.study")


def _started(run_dir: Path | None) -> bool:
    return run_dir is not None and ((run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists())


def _write_if_changed(path: Path, text: str, run_dir: Path | None) -> None:
    """Write a run config; refuse to change the config of a run that has started."""
    if path.is_file() and path.read_text() != text and _started(run_dir):
        raise ConfigError(
            f"{path}: the study now gives this run a different config, but {run_dir} was trained with the "
            f"old one; use another out_dir (or move {run_dir} away) to start over"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)


def prepare(spec, cli_overrides: list[str], need_data: bool = True):
    """-> (base config, {variant: config}, [Job]). Writes the configs."""
    from ..data.plan import make_plan

    base = load_config(spec.base, [*spec.overrides, *cli_overrides])
    try:
        plan = make_plan(base)
    except ConfigError as e:
        if need_data:
            raise
        log.info(f"study: data not available here ({e}); variants derived from the config's blends")
        plan = None
    out = Path(spec.out_dir)
    variants, jobs = {}, []
    for v in spec.variants:
        vcfg = variant_config(base, v, plan)
        vcfg.train.out_dir = str(out / v)
        variants[v] = vcfg
        _write_if_changed(out / "configs" / f"{v}.yaml", yaml.safe_dump(vcfg.to_dict(), sort_keys=False), None)
        total = sum(p.steps for p in vcfg.data.phases)
        for seed in spec.seeds:
            d = vcfg.to_dict()
            run_dir = out / v / f"seed{seed}"
            d["train"].update(seed=seed, out_dir=str(run_dir), max_steps=None)
            d["data"]["seed"] = seed
            d["data"]["cache_dir"] = d["data"].get("cache_dir") or str(out / "index_cache")
            cfg_path = out / "configs" / f"{v}_seed{seed}.yaml"
            _write_if_changed(cfg_path, yaml.safe_dump(d, sort_keys=False), run_dir)
            jobs.append(Job(f"{v}/seed{seed}", run_dir, cfg_path, total, list(spec.eval_args), list(spec.launcher)))
    return base, variants, jobs


def describe(variants: dict) -> str:
    lines = []
    for v, cfg in variants.items():
        g = cfg.train.global_batch_size
        parts = []
        for p in cfg.data.phases:
            tot = source_totals([p], g)
            fim = sum(f for _, f in tot.values()) / max(1, sum(n for n, _ in tot.values()))
            parts.append(f"{p.name} {p.steps} steps (FIM {fim:.1%} of samples)")
        lines.append(f"{v:<11} " + ", ".join(parts))
        tot = source_totals(cfg.data.phases, g)
        lines.append(
            "            samples (FIM) per source: "
            + ", ".join(f"{s} {n} ({f:.0f})" for s, (n, f) in sorted(tot.items()))
        )
    return "\n".join(lines)


def _plan_cost(variants: dict, seeds: int, gpus: int, gpu: str) -> str:
    from ..planner import plan
    from ..rehearsal.plan_costs import RehearsalCosts

    lines, total_h = [], 0.0
    for v, cfg in variants.items():
        rows = [r for r in plan(cfg, gpus, gpu, source=RehearsalCosts(cfg)) if r["fits"]]
        if not rows:
            lines.append(f"{v:<11} no layout fits on {gpus}x {gpu}")
            continue
        best = rows[0]
        steps = sum(p.steps for p in cfg.data.phases)
        hours = best["step_s"] * steps / 3600
        total_h += hours * seeds
        lines.append(
            f"{v:<11} tp {best['tp']} pp {best['pp']} dp {best['dp']}: {best['step_s']:.3g} s/step x {steps} steps = "
            f"{hours:,.0f} h on {gpus} GPUs ({hours * gpus:,.0f} GPU-hours) per seed"
        )
    lines.append(
        f"study: {len(variants)} variants x {seeds} seed(s) = {total_h:,.0f} h, {total_h * gpus:,.0f} GPU-hours"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the study file (examples/study.yaml)")
    ap.add_argument("--jobs", help="parallel runs (overrides the file's jobs)")
    ap.add_argument("--dry-run", action="store_true", help="write and describe the variant configs only")
    ap.add_argument("--plan-gpus", type=int, help="with --dry-run: the study's cost on N GPUs (megacrystal plan)")
    ap.add_argument(
        "--gpu", default="h100", choices=hardware_names(), help="device for --plan-gpus (megacrystal plan's table)"
    )
    ap.add_argument("overrides", nargs="*", help="dotted overrides of the base run config")
    a = ap.parse_args(argv)
    t0 = time.time()
    try:
        spec = read_spec(a.config, [f"jobs={a.jobs}"] if a.jobs else None)
        if a.jobs and spec.jobs != "auto":
            spec.jobs = int(spec.jobs)
        _, variants, jobs = prepare(spec, a.overrides, need_data=not a.dry_run)
    except (ConfigError, ValueError) as e:
        print(f"megacrystal study: {e}", file=sys.stderr)
        return 2
    print(describe(variants))
    if a.dry_run:
        if a.plan_gpus:
            print(_plan_cost(variants, len(spec.seeds), a.plan_gpus, a.gpu))
        print(f"configs in {Path(spec.out_dir) / 'configs'}")
        return 0
    try:
        for j in jobs:
            j.plan()
    except ValueError as e:
        print(f"megacrystal study: {e}", file=sys.stderr)
        return 2
    n = spec.num_jobs()
    todo = [j for j in jobs if j.steps]
    load0 = os.getloadavg()
    log.info(f"study: {len(jobs)} runs, {len(jobs) - len(todo)} already done, {len(todo)} to run, {n} at a time")
    run_jobs(todo, n, spec.threads_per_job, spec.job_timeout_s, log.info)
    failed = [j for j in jobs if j.status == "failed"]
    summary = {"table": None}
    if not failed:
        from ..evaluation.compare import compare

        summary = compare([str(j.run_dir) for j in jobs], str(Path(spec.out_dir) / "compare"), with_trajectory=True)
    record = dict(
        wall_s=round(time.time() - t0, 1),
        parallel_jobs=n,
        threads_per_job=spec.threads_per_job,
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        loadavg_start=load0,
        loadavg_end=os.getloadavg(),
        runs={j.name: dict(status=j.status, seconds=round(j.seconds, 1), error=j.error) for j in jobs},
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t0)),
    )
    from ..evaluation.report import write_json

    write_json(Path(spec.out_dir) / "study.json", record)
    if failed:
        for j in failed:
            print(f"megacrystal study: {j.name} failed: {j.error}", file=sys.stderr)
        return 1
    print(summary["table"])
    if summary.get("trajectory"):
        print("\nAt each phase end:\n")
        print(summary["trajectory"]["table"])
        summary["plots"] += summary["trajectory"]["files"]
    for p in summary.get("plots", []):
        print(f"wrote {p}")
    print(f"study done in {record['wall_s'] / 60:.1f} min ({n} parallel runs); {Path(spec.out_dir) / 'study.json'}")
    return 0
