"""Defaults a long run needs: a warning at start for a long run that would checkpoint only at its end, a
step watchdog on multi-rank runs by default, and the MFU peak of what runs (fp32 / TF32 / bf16 / fp64)."""

from __future__ import annotations

import itertools
import threading

import torch

from megacrystal.config import load_config
from megacrystal.config.schema import PhaseConfig
from megacrystal.train import long_run, metrics, watchdog
from megacrystal.train.long_run import end_only_save_warning, first_save_before_end
from megacrystal.train.lr_schedule import Schedule
from megacrystal.train.phase_policy import save_due


def _schedule(steps: list[int], intervals: list[int | None]) -> Schedule:
    phases = [
        PhaseConfig(name=f"p{i}", steps=n, save_interval=s)
        for i, (n, s) in enumerate(zip(steps, intervals, strict=True))
    ]
    return Schedule(phases, steps)


def _brute_force(schedule: Schedule, default: int, start: int, total: int) -> int | None:
    for step in range(start + 1, total):
        span = schedule.span(step - 1)  # the step just done
        if save_due(step, span, schedule.phases[span.index], default):
            return step
    return None


def test_first_save_before_end_agrees_with_the_loops_save_policy():
    cases = itertools.product(
        [[10], [7, 5], [3, 8, 4]],  # phase lengths
        [None, 0, 1, 3, 4, 20],  # phase 0's save_interval (None: the run's)
        [0, 2, 6],  # train.save_interval
        [0, 3, 7],  # the step the run starts (or resumes) at
        [None, 5],  # train.max_steps
    )
    for steps, s0, default, start, cap in cases:
        sched = _schedule(steps, [s0] + [None] * (len(steps) - 1))
        total = min(sum(steps), cap) if cap else sum(steps)
        if start >= total:
            continue
        want = _brute_force(sched, default, start, total)
        assert first_save_before_end(sched, default, start, total) == want, (steps, s0, default, start, cap)


def _cfg(*overrides):
    return load_config(None, ["model.preset=tiny", *overrides], validate=False)


def test_a_long_run_saving_only_at_its_end_is_warned():
    one = _schedule([1500], [None])
    text = end_only_save_warning(_cfg(), one, 0, 1500)
    assert text and "checkpoints only at its end" in text and "1500 steps" in text and "train.save_interval" in text
    assert end_only_save_warning(_cfg(), one, 600, 1500) is None  # 900 steps left: not long
    assert end_only_save_warning(_cfg("train.save_interval=500"), one, 0, 1500) is None
    two = _schedule([600, 900], [0, 200])  # phase 2 saves: not end-only
    assert end_only_save_warning(_cfg(), two, 0, 1500) is None
    assert end_only_save_warning(_cfg(), _schedule([999], [None]), 0, 999) is None
    assert long_run.expected_over_an_hour(_cfg(), 1000) and not long_run.expected_over_an_hour(_cfg(), 999)


def test_multi_rank_runs_get_a_watchdog_by_default():
    assert watchdog.step_timeout(_cfg(), 1) == 0.0  # one rank: off unless asked
    assert watchdog.step_timeout(_cfg(), 8) == 600.0
    assert watchdog.step_timeout(_cfg("parallel.timeout_s=300"), 8) == 150.0  # before the collective timeout
    assert watchdog.step_timeout(_cfg("train.step_timeout_s=0"), 8) == 0.0  # off when asked
    assert watchdog.step_timeout(_cfg("train.step_timeout_s=42"), 1) == 42.0


def test_the_first_step_may_take_longer_than_the_rest(monkeypatch):
    fired = threading.Event()
    monkeypatch.setattr(watchdog.StepWatchdog, "_fire", lambda self, step, age, limit: fired.set())
    dog = watchdog.StepWatchdog(1000.0)
    try:
        assert dog._limit == 1000.0 * watchdog.FIRST_STEP_FACTOR
        dog.start(1)
        dog.stop()
        assert dog._limit == 1000.0  # from the second step on
        dog.timeout_s = dog._limit = 0.01
        dog.start(2)  # a stalled step: the watchdog's thread fires
        assert fired.wait(60)
    finally:
        dog.close()


def test_mfu_peak_is_the_peak_of_what_runs(monkeypatch):
    h100 = "NVIDIA H100 80GB HBM3"
    assert metrics.gpu_peak(h100, "bf16", False) == (989e12, "datasheet H100 bf16")
    assert metrics.gpu_peak(h100, "fp32", True) == (494.5e12, "datasheet H100 TF32")
    assert metrics.gpu_peak(h100, "fp32", False) == (67e12, "datasheet H100 fp32")
    assert metrics.gpu_peak(h100, "fp64", False)[0] == 67e12
    assert metrics.gpu_peak("NVIDIA H100 PCIe", "bf16", False)[0] == 756e12
    assert metrics.gpu_peak("NVIDIA A10", "bf16", False)[0] == 125e12  # not A100's
    assert metrics.gpu_peak("NVIDIA A100-SXM4-80GB", "bf16", False)[0] == 312e12
    assert metrics.gpu_peak("NVIDIA L4", "fp64", False) == (0.0, "datasheet L4 fp64 (not in the table)")
    assert metrics.gpu_peak("Some GPU", "bf16", False)[0] == 0.0
    monkeypatch.delenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", raising=False)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert metrics.tf32_matmuls() == (False, "torch float32 matmul precision 'highest'")
        torch.set_float32_matmul_precision("high")
        assert metrics.tf32_matmuls()[0] is True
        torch.set_float32_matmul_precision("highest")
        monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1")
        assert metrics.tf32_matmuls() == (True, "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1")
    finally:
        torch.set_float32_matmul_precision(before)
    peak, src = metrics.peak_flops(torch.device("cpu"), "fp64")
    assert peak > 0 and src == "measured CPU fp64 matmul"


def test_a_long_run_is_judged_by_the_planners_step_time():
    """A CPU run asks the planner (the table's cpu entry, formula costs): a tiny model's 1,500 steps take
    minutes, not an hour; the 7B recipe's 10 steps take hours. A device the table does not know (the
    meta device of a rehearsal) keeps the 1,000-step rule."""
    cpu, meta = torch.device("cpu"), torch.device("meta")
    tiny = _cfg("train.micro_batch_size=2", "train.global_batch_size=4", "data.seq_length=64")
    est = long_run.estimated_step_seconds(tiny, 1, cpu)
    assert est is not None and 0 < est < 3600 / 1500
    assert not long_run.expected_over_an_hour(tiny, 1500, 1, cpu)
    assert long_run.expected_over_an_hour(tiny, 1500, 1, meta)  # no estimate: the step-count rule
    big = load_config("examples/crystal_7b.yaml", ["parallel.tp=1", "parallel.sequence_parallel=false"], validate=False)
    assert long_run.estimated_step_seconds(big, 1, cpu) > 360
    assert long_run.expected_over_an_hour(big, 10, 1, cpu) and not long_run.expected_over_an_hour(big, 10, 1, meta)
    text = end_only_save_warning(big, _schedule([10], [None]), 0, 10, 1, cpu)
    assert text and "by the planner's estimate" in text
    assert long_run.estimated_step_seconds(big, 7, cpu) is None  # 2112 samples over 7 ranks: refused, no estimate
