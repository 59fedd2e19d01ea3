"""The training loop: phases walked as one run over the 3D-parallel engine.

Each step: the loader gives this DP rank's micro-batches, the schedule the phase's base LR, the
engine runs forward/backward over the pipeline schedule, reduces gradients and steps the optimizer.
Rank 0 writes metrics.jsonl + TensorBoard; checkpoints (checkpoint/writer.py) hold every rank's pieces
of the model and optimizer in a layout-independent form, the loader state (so a resume gets exactly
the next samples, also mid-phase, on any layout) and the counters.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.profiler import record_function

from ..checkpoint import Checkpointer, save_consolidated
from ..checkpoint.files import find_resume_point
from ..config import Config
from ..data.loader import build_data
from ..data.plan import make_plan
from ..engine.engine import Engine
from ..log import get_logger
from ..parallel.host_group import host_group
from ..parallel.init import init_distributed
from .finite import SkipCounter, ensure_finite
from .init_from import init_from
from .long_run import end_only_save_warning
from .lr_schedule import Schedule
from .metrics import MetricsWriter, flops_per_token, peak_flops
from .phase_policy import phase_validation, save_due
from .preemption import StopRequested, StopSignals
from .watchdog import StepWatchdog, step_timeout

log = get_logger("megacrystal.train")


def evaluate(engine, valid: dict, cfg: Config, grid) -> dict:
    """Per-source validation loss (token mean over `train.eval_iters` global batches of each source)."""
    with record_function("megacrystal.eval"):  # a profiler range (and a rehearsal's section marker)
        return _evaluate(engine, valid, cfg, grid)


def _evaluate(engine, valid: dict, cfg: Config, grid) -> dict:
    out = {}
    t = cfg.train
    for name, vset in valid.items():
        loader = vset.batches(
            t.eval_iters,
            grid.dp_rank,
            grid.dp_size,
            t.micro_batch_size,
            t.global_batch_size,
            grid.cp_rank,
            grid.cp_size,
        )
        total, count = 0.0, 0.0
        for mbs in loader:
            s, c = engine.eval_loss(mbs)
            total, count = total + s, count + c
        out[name] = total / max(count, 1.0)
    return out


def train(cfg: Config) -> dict:
    """Run (or resume) the configured training; returns the last step's metrics. Raises
    StopRequested after saving on SIGTERM/SIGINT, NonFiniteError after too many non-finite steps."""
    stop, dog = StopSignals(), StepWatchdog(step_timeout(cfg, int(os.environ.get("WORLD_SIZE", "1"))))
    try:
        return _train(cfg, stop, dog)
    finally:
        dog.close()
        stop.uninstall()


def _train(cfg: Config, stop: StopSignals, dog: StepWatchdog) -> dict:
    get_logger().setLevel(cfg.log.level)
    # Everything that can be wrong with the data (files, tokenizer, vocabulary, FIM tokens) is found
    # before any process group exists, on every rank alike, so a bad file never leaves ranks waiting.
    data_plan = make_plan(cfg)
    grid, device = init_distributed(cfg)
    t = cfg.train
    out_dir = Path(t.out_dir)
    rank0 = grid.rank == 0
    if rank0:
        out_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # the one host-side group: the data set-up handshake and checkpoint traffic (parallel/host_group.py)
    host = host_group(cfg.parallel.timeout_s)
    plan, loader, valid = build_data(
        cfg,
        grid.dp_rank,
        grid.dp_size,
        group=host,
        with_validation=t.eval_interval > 0,
        plan=data_plan,
        cp_rank=grid.cp_rank,
    )
    schedule = Schedule([p.config for p in plan.phases], [p.steps for p in plan.phases])
    total_steps = min(schedule.total_steps, t.max_steps) if t.max_steps else schedule.total_steps
    engine = Engine(cfg, device, init_weights=False)  # drawn below unless a checkpoint or init_from sets them

    source_names = plan.source_names
    counts = torch.zeros(len(source_names), dtype=torch.float64)
    step, tokens_seen = 0, 0
    skips = SkipCounter(t.max_skipped_steps)
    ckptr = Checkpointer(engine, str(out_dir), t.async_save, cfg.data.tokenizer_model, group=host)
    ckptr.keep, ckptr.keep_every = t.keep_checkpoints, t.keep_every
    ckpt, meta = find_resume_point(out_dir, t.resume, ckptr.group), None
    if ckpt is not None:
        meta = ckptr.load(ckpt)
        ckptr.protect = (ckpt,)
        loader.load_state_dict(meta["loader"])
        step, tokens_seen = meta["step"], meta["tokens"]
        counts = torch.tensor([meta["samples_per_source"].get(n, 0) for n in source_names], dtype=torch.float64)
        skips = SkipCounter(t.max_skipped_steps, meta.get("skipped_steps", 0), meta.get("skipped_per_phase"))
        log.info(f"resumed from {ckpt} at step {step} (phase {schedule.span(step).name})")
    elif t.init_from:
        log.info(init_from(engine, t.init_from, t.init_optimizer, ckptr.group))
    else:
        engine.draw_initial_weights()
    loader.total_steps = total_steps

    metrics = MetricsWriter(str(out_dir), enabled=rank0, tensorboard=cfg.log.tensorboard)
    metrics.truncate_after(step)
    seq = cfg.data.seq_length
    step_tokens = t.global_batch_size * seq
    fpt = flops_per_token(cfg.model, seq)
    peak, peak_src = peak_flops(device, t.precision)
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    if rank0:
        log.info(
            f"training {engine.num_parameters() / 1e6:.2f} M parameters, steps {step}..{total_steps}, "
            f"phases {[(p.name, p.steps) for p in plan.phases]}, grid tp={grid.tp_size} cp={grid.cp_size} pp={grid.pp_size} "
            f"dp={grid.dp_size}, device {device}, step watchdog "
            f"{f'{dog.timeout_s:g} s' if dog.timeout_s > 0 else 'off'}, MFU peak: {peak_src}"
        )
        warning = end_only_save_warning(cfg, schedule, step, total_steps, world_size, device)
        if warning:
            log.warning(warning)

    last_saved = step

    def save(at_step):
        with record_function("megacrystal.checkpoint"):
            _save(at_step)

    def _save(at_step):
        nonlocal last_saved
        engine.sync_params()  # the parameter all-gathers left to the next forward complete first
        ensure_finite(engine, at_step)  # never a checkpoint holding NaN/Inf
        state = dict(
            loader=loader.state_dict(),
            tokens=tokens_seen,
            phase=schedule.span(max(at_step - 1, 0)).name,
            samples_per_source={n: int(c) for n, c in zip(source_names, counts.tolist(), strict=True)},
            **skips.state_dict(),
        )
        ckptr.save(at_step, state, cfg.to_dict())
        last_saved = at_step

    def stop_here():
        """Every rank, at the same step boundary (the flag travels with the next step's batch check):
        save the steps done, then end the run."""
        loader.step = step  # the batches fetched for the step that will not run are read again on resume
        if step > last_saved:
            save(step)
        ckptr.close()  # the stop's checkpoint is committed before the exit
        metrics.close()
        if step == 0:
            raise StopRequested(f"stopped by {stop.name} before the first step; nothing to save")
        raise StopRequested(f"stopped by {stop.name} after step {step}; its checkpoint is in {out_dir}/checkpoints")

    record: dict = {}
    it = iter(loader)
    dog.rank = grid.rank
    while step < total_steps:
        span = schedule.span(step)
        lr = schedule.lr(step, skips.lag(span.name))
        t0 = time.perf_counter()
        dog.start(step + 1)
        mbs = next(it)
        # a SIGTERM/SIGINT on any rank (during start-up, or before this step) stops here, before it runs
        out = engine.train_step(mbs, lr, stop=stop.signum is not None)
        if out["stopped"]:
            dog.stop()
            stop_here()
        global_counts = loader.source_counts(step)  # the whole global batch's, from the data plan: no collective
        if global_counts is not None:
            counts += torch.from_numpy(global_counts).double()
        logged = (step + 1) % t.log_interval == 0 or step + 1 == total_steps or out["skipped"]
        if logged and device.type == "cuda":
            torch.cuda.synchronize(device)  # the step's time is measured where it is logged, and only there
        dt = time.perf_counter() - t0
        dog.stop()
        step += 1
        tokens_seen += step_tokens
        tps = step_tokens / dt
        record = dict(
            step=step,
            phase=span.name,
            loss=out["loss"],
            lr=lr,
            grad_norm=out["grad_norm"],
            tokens=tokens_seen,
            samples_per_source={n: int(c) for n, c in zip(source_names, counts.tolist(), strict=True)},
            tokens_per_s=tps,
            mfu=(fpt * tps / (peak * world_size)) if peak else 0.0,
            step_time_s=dt,
            skipped=out["skipped"],
            skipped_steps=skips.total + out["skipped"],
        )
        if t.eval_interval and valid and (step % t.eval_interval == 0 or step == total_steps):
            record["valid_loss"] = evaluate(engine, phase_validation(valid, schedule.phases[span.index]), cfg, grid)
        if logged:
            metrics.write(record)
            if rank0 and out["skipped"]:
                log.warning(
                    f"step {step}/{total_steps} [{span.name}] skipped: loss {out['loss']} grad_norm "
                    f"{out['grad_norm']} (non-finite; no update, {record['skipped_steps']} skipped so far)"
                )
            elif rank0:
                extra = "".join(f" valid[{k}] {v:.3f}" for k, v in record.get("valid_loss", {}).items())
                log.info(
                    f"step {step}/{total_steps} [{span.name}] loss {out['loss']:.4f} lr {lr:.3e} "
                    f"grad_norm {out['grad_norm']:.3f} {tps:,.0f} tok/s mfu {record['mfu']:.3f}{extra}"
                )
        skips.record(out["skipped"], step, span.name, out["loss"], out["grad_norm"])  # raises: too many in a row
        if save_due(step, span, schedule.phases[span.index], t.save_interval, t.keep_every) and step < total_steps:
            save(step)
    engine.sync_params()  # the run ends: nothing left in flight
    if step > last_saved:
        save(step)
    ckptr.close()
    if t.save_consolidated and rank0:
        log.info(f"wrote {save_consolidated(out_dir, cfg.data.tokenizer_model)}")
    metrics.close()
    return record
