"""The rehearsal's peak memory against a reference that counts differently: torch.profiler's record of
every allocation (`profile_memory=True`) in a real CPU run of the same configuration and data."""

from __future__ import annotations

import pytest
import torch

from megacrystal.config import load_config
from megacrystal.rehearsal import rehearse

CRYSTAL = "examples/crystal_7b.yaml"
SMALL = [
    "model.preset=tiny",
    "model.hidden_size=256",
    "model.num_heads=4",
    "model.ffn_hidden_size=683",
    "model.max_seq_len=256",
    "data.seq_length=256",
    "train.micro_batch_size=4",
    "train.global_batch_size=8",
    "parallel.tp=1",
    "parallel.sequence_parallel=false",
    "model.kernels=torch",  # the CPU runs the torch twins of the fused kernels; so does the play
]


def _profiled_step_peak(cfg) -> int:
    """Peak of the bytes the CPU allocator holds during the train step, from the profiler's allocation
    records (kineto's `[memory]` events: +bytes at each allocation, -bytes at each free)."""
    from megacrystal.train.loop import train

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        train(cfg)
    events = prof.profiler.kineto_results.events()
    steps = [(e.start_ns(), e.start_ns() + e.duration_ns()) for e in events if e.name() == "megacrystal.train_step"]
    assert steps, "the step's profiler range is missing"
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    assert mem, "no allocation was recorded"
    total, peak = 0, 0
    for t, delta in mem:
        total += delta
        if any(a <= t <= b for a, b in steps):
            peak = max(peak, total)
    return peak


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_peak_within_5_percent_of_a_profiled_cpu_run(tmp_path, precision):
    over = SMALL + [f"train.precision={precision}"]
    rec = rehearse(CRYSTAL, 1, "h100", over, steps=1, jobs=1, workdir=tmp_path / "work")
    assert rec["verdict"] == "pass", rec["lines"]
    rehearsed = rec["ranks"][0]["memory"]["sections"]["step 1"]["peak_bytes"]
    # the same rehearsed configuration (stand-in data, one step), trained for real on the CPU
    path = next((tmp_path / "work").glob("rehearsal-*.yaml"))
    cfg = load_config(str(path), ["train.device=cpu", f"train.out_dir={tmp_path / 'run'}", "train.async_save=false"])
    measured = _profiled_step_peak(cfg)
    print(f"{precision}: rehearsed {rehearsed} B, profiled {measured} B, {rehearsed / measured - 1:+.2%}")
    assert abs(rehearsed - measured) <= 0.05 * measured, (rehearsed, measured)
