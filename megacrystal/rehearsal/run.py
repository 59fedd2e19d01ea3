"""`rehearse(...)`: play a launch of N ranks on this CPU and return its record (nothing printed).

    from megacrystal.rehearsal import rehearse
    rec = rehearse("examples/crystal_7b.yaml", gpus=256, gpu="h100", overrides=["parallel.tp=2", "parallel.pp=4"])
    rec["verdict"], rec["findings"], rec["ranks"][0]["memory"]["peak_bytes"]

Cheap to call again: stand-in data, index caches and the rehearsed configuration are kept in the
work directory (by content), imports and worker processes are reused, and `steps=1` halves a play.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..config import Config, ConfigError, load_config
from ..parallel.state import group_ranks
from ..planner import hardware as planner_hardware
from ..planner.shapes import recompute_of
from . import checks
from .findings import Finding, summarise
from .gpus import GPUS
from .launch import prepare
from .positions import axis_sizes, coordinates, played_coordinates, played_ranks
from .record import SCHEMA, SEAMS, rank_record

_pools: dict[int, ProcessPoolExecutor] = {}


def default_workdir() -> Path:
    return Path(tempfile.gettempdir()) / f"megacrystal-rehearsal-{os.getuid()}"


def _pool(jobs: int) -> ProcessPoolExecutor:
    pool = _pools.get(jobs)
    if pool is None:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # the fake groups' start-up chatter
        pool = _pools[jobs] = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
        atexit.register(pool.shutdown, cancel_futures=True)
    return pool


def _names(world: int, tp: int, pp: int, order: str, cp: int = 1) -> dict[tuple, str]:
    names: dict[tuple, str] = {}
    groups = group_ranks(world, tp, pp, order, cp)
    for kind in reversed(list(groups)):  # the first kind in group_ranks' order (tp, pp, dp, ..., cp, dp_cp) wins
        for ranks in groups[kind]:
            names[tuple(sorted(ranks))] = kind
    return names


def _play_all(path: str, world: int, ranks: list[int], coords: dict, names: dict, out_root: str, jobs: int):
    from .play import play_rank

    args = [(path, r, world, coords[r], names, out_root) for r in ranks]
    if jobs <= 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            raise RuntimeError("rehearse(jobs=1) plays in this process, which already has a process group")
        return [play_rank(*a) for a in args]
    pool = _pool(jobs)
    first = pool.submit(play_rank, *args[0]).result()  # rank 0 builds the data indices the others read
    return [first] + list(pool.map(play_rank, *zip(*args[1:], strict=True))) if len(args) > 1 else [first]


def rehearse(
    config: str | Config,
    gpus: int,
    gpu: str = "h100",
    overrides: list[str] | tuple = (),
    steps: int = 2,
    jobs: int = 1,
    workdir: str | Path | None = None,
) -> dict:
    """The record of a rehearsed launch of `config` on `gpus` GPUs of kind `gpu` (record.py)."""
    t0 = time.perf_counter()
    if gpu not in GPUS:
        raise ValueError(f"--gpu: expected one of {sorted(GPUS)}, got {gpu!r}")
    spec = GPUS[gpu]
    workdir = Path(workdir) if workdir else default_workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    head = dict(
        schema=SCHEMA,
        config=str(config) if not isinstance(config, Config) else config.source_file,
        overrides=list(overrides),
        world=gpus,
        gpu=dict(kind=gpu, name=spec.name, capacity_bytes=spec.capacity, usable_bytes=spec.usable),
    )
    try:
        cfg = config if isinstance(config, Config) else load_config(str(config), list(overrides))
        launch = prepare(cfg, gpus, steps, workdir)
    except ConfigError as e:
        f = Finding("config", 0, str(e), "(before any process group)")
        return dict(head, verdict="fail", findings=[f.to_dict()], lines=summarise([f]), ranks=[])
    par, m, t = cfg.parallel, cfg.model, cfg.train
    sizes = axis_sizes(par, gpus)
    ranks = played_ranks(gpus, sizes, par.order)
    coords = {r: coordinates(gpus, sizes, par.order, r) for r in ranks}
    out_root = tempfile.mkdtemp(prefix="plays-", dir=workdir)
    try:
        plays = _play_all(
            str(launch.path), gpus, ranks, coords, _names(gpus, par.tp, par.pp, par.order, par.cp), out_root, jobs
        )
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    findings = [Finding(**f) for p in plays for f in p["findings"]]
    findings += checks.collective_order(plays) + checks.p2p_matching(plays) + checks.memory_fit(plays, spec, gpu)
    layout = dict(
        tp=par.tp,
        cp=par.cp,
        pp=par.pp,
        vpp=par.vpp,
        dp=sizes["dp"],
        order=par.order,
        sequence_parallel=bool(par.sequence_parallel and par.tp > 1),
        distributed_optimizer=bool(par.distributed_optimizer),
    )
    return dict(
        head,
        verdict="fail" if findings else "pass",
        findings=[f.to_dict() for f in findings],
        lines=summarise(findings),
        layout=layout,
        layer_shape=dict(
            tp=par.tp,
            cp=par.cp,
            sequence_parallel=layout["sequence_parallel"],
            recompute=recompute_of(m),
            micro_batch_size=t.micro_batch_size,
            seq_length=cfg.data.seq_length,
        ),
        model=dict(
            family=m.family,
            layers=m.num_layers,
            hidden=m.hidden_size,
            heads=m.num_heads,
            kv_heads=m.num_kv_heads,
            ffn=m.ffn_hidden_size,
            vocab=m.vocab_size,
            precision=t.precision,
            document_mask=bool(m.document_mask),
            attention_backend=m.attention_backend,
        ),
        micro_batches=launch.micro_batches,
        steps=steps,
        played=dict(axes=played_coordinates(sizes), ranks=ranks),
        substitutions=dict(notes=launch.notes, stand_ins=launch.stand_ins, seams=SEAMS),
        ranks=[rank_record(p, planner_hardware.get(gpu), t.precision) for p in plays],
        timing=dict(seconds=round(time.perf_counter() - t0, 1), jobs=jobs, load_average=list(os.getloadavg())),
    )
