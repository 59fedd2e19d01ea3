"""`megacrystal plan`: the pipeline simulation against the bubble formula and the engine's own
schedule, the alpha-beta model against hand calculations on the real rank placement, monotonicity,
the FLOP count against the model's accounting, the overlap switches, hardware files and the CLI."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from megacrystal.cli import main
from megacrystal.config import ConfigError, load_config
from megacrystal.parallel.pipeline_schedules import Entry, interleaved_table
from megacrystal.planner import comm, hardware
from megacrystal.planner.compose import compose
from megacrystal.planner.costs import FORMULA
from megacrystal.planner.pipeline_sim import simulate, trace
from megacrystal.planner.shapes import Features, LayerShape, Layout, ModelShape
from megacrystal.train.metrics import flops_per_token

ROOT = Path(__file__).resolve().parents[1]
H100 = hardware.get("h100")


@pytest.mark.parametrize("pp,vpp,m", [(4, 1, 8), (4, 2, 8), (2, 2, 4), (8, 1, 16), (4, 3, 12)])
def test_equal_stages_reproduce_the_bubble_formula(pp, vpp, m):
    r = simulate(pp, vpp, m, lambda rank, kind, c: (1.0 if kind == "F" else 2.0) / vpp, lambda s, d: 0.0)
    for rank in range(pp):
        assert r.idle(rank) == pytest.approx((pp - 1) / (vpp * m + pp - 1), abs=1e-12)


def test_simulation_plays_the_engines_interleaved_table():
    for rank in range(4):
        computed = [Entry(e[0], e[1], e[2]) for e in trace(4, 2, 8)[rank] if e[0] != "X"]
        assert computed == interleaved_table(4, rank, 2, 8)


def test_simulation_plays_the_engines_1f1b():
    for rank in range(4):
        kinds = "".join(e[0] for e in trace(4, 1, 8)[rank] if e[0] != "X")
        warm = 4 - rank - 1  # PipeDream-flush: pp-r-1 forwards, then one forward one backward, then the rest
        assert kinds == "F" * warm + "FB" * (8 - warm) + "B" * warm


def test_blocking_transfers_cost_more_than_early_posted_ones():
    dur = lambda r, k, c: 0.01 if k == "F" else 0.02
    blocking = simulate(4, 2, 8, dur, lambda s, d: 0.0015, blocking=True)
    early = simulate(4, 2, 8, dur, lambda s, d: 0.0015, blocking=False)
    assert early.span_s < blocking.span_s
    assert blocking.bubble > (4 - 1) / (2 * 8 + 4 - 1)  # the CPU benchmark's excess (docs/planner.md)


def test_alpha_beta_against_hand_calculations():
    intra = comm.Span(size=8, per_node=8, nodes=1)
    t, algo = comm.all_reduce(1e9, intra, H100)
    assert algo == "ring" and t == pytest.approx(2 * 7 / 8 * 1e9 / (450e9 * 0.8) + 2 * 7 * 1e-6)
    assert comm.all_gather(1e9, intra, H100) == pytest.approx(7 / 8 * 1e9 / 360e9 + 7e-6)
    # one member per node over 32 nodes: the NIC (50 GB/s at 90%) is the bus; tree for a small message
    spread = comm.Span(size=32, per_node=1, nodes=32)
    ring = 2 * 31 / 32 * 1e6 / 45e9 + 2 * 31 * 5e-6
    tree = 2 * 1e6 / 45e9 + 2 * (5 * 5e-6 + 0)
    t, algo = comm.all_reduce(1e6, spread, H100)
    assert algo == "tree" and t == pytest.approx(min(ring, tree))
    t, algo = comm.all_reduce(1e10, spread, H100)
    assert algo == "ring" and t == pytest.approx(2 * 31 / 32 * 1e10 / 45e9 + 2 * 31 * 5e-6)
    assert comm.p2p(1e8, False, H100) == pytest.approx(1e8 / 45e9 + 5e-6)


def test_spans_come_from_the_engines_rank_placement():
    s = comm.spans(256, 2, 4, "tp-dp-pp", 8)  # rank = tp + 2 * (dp + 32 * pp)
    assert s["tp"] == comm.Span(2, 2, 1)
    assert s["dp"] == comm.Span(32, 4, 8)
    assert s["pp"] == comm.Span(4, 1, 4)
    s = comm.spans(256, 2, 4, "tp-pp-dp", 8)  # the whole pipeline inside a node
    assert s["pp"] == comm.Span(4, 4, 1)


def _crystal(overrides=()):
    return load_config(str(ROOT / "examples" / "crystal_7b.yaml"), list(overrides), validate=False)


def test_gemm_and_attention_flops_are_the_models_own_accounting():
    # FFN and vocabulary already multiples of 64: the executed FLOPs are the accounted ones
    cfg = _crystal(["model.ffn_hidden_size=11008", "model.vocab_size=32064", "model.num_layers=4"])
    m, seq, mbs = ModelShape.from_config(cfg.model), 2048, 2
    s = LayerShape(m, 1, False, "none", mbs, seq, Features())
    lc, hc = FORMULA.layer(s), FORMULA.head(s)
    gemm = m.layers * lc.flops(cls="gemm") + hc.flops(cls="gemm")
    causal_fwd = m.layers * lc.flops(phase="fwd", cls="attention")
    total = gemm + 3 * 2 * causal_fwd  # fwd + 2x bwd, the full (not causal-halved) convention
    assert total == pytest.approx(flops_per_token(cfg.model, seq) * mbs * seq, rel=1e-12)


LAYOUT = Layout(tp=2, pp=2, dp=8, sp=True, mbs=1)
TODAY = Features()


def _step(hw=H100, lay=LAYOUT, gbs=64, feat=TODAY):
    m = ModelShape.from_config(_crystal().model)
    return compose(m, lay, feat, hw, 2048, gbs)


def test_step_time_is_monotone_in_bandwidth_and_batch():
    slow = replace(H100, inter_bw=12.5e9, intra_bw=100e9)
    fast = replace(H100, inter_bw=100e9, intra_bw=900e9)
    assert _step(slow).step_s > _step(H100).step_s > _step(fast).step_s
    times = [_step(gbs=g).step_s for g in (16, 32, 64, 128)]
    assert times == sorted(times) and len(set(times)) == 4


def test_each_overlap_is_a_switch_and_todays_defaults_are_the_engines():
    lay = Layout(tp=2, pp=2, dp=8, sp=True, dist_opt=True, mbs=1)
    base = _step(lay=lay)
    assert _step(lay=lay, feat=Features(overlap_grad_reduce=False)).step_s > base.step_s
    assert _step(lay=lay, feat=Features(overlap_param_gather=False)).step_s > base.step_s
    assert _step(lay=lay, feat=Features(overlap_p2p=False)).step_s >= base.step_s
    gather = next(c for c in base.collectives if c["name"].startswith("dp.all_gather"))
    assert 0 <= gather["exposed_s"] < gather["total_s"]  # ZeRO-1's gather hides behind the next forward
    off = _step(lay=lay, feat=Features(overlap_param_gather=False))
    gather_off = next(c for c in off.collectives if c["name"].startswith("dp.all_gather"))
    assert gather_off["exposed_s"] == gather_off["total_s"] == gather["total_s"]
    assert "pre-hook" in gather["where"] and "all waited at its end" in gather_off["where"]
    f = Features.from_config(_crystal())
    assert f.overlap_grad_reduce and f.overlap_param_gather and f.overlap_p2p  # the engine's defaults (issue 21)


def test_memory_splits_over_tp_and_the_distributed_optimizer():
    a = _step(lay=Layout(tp=2, pp=1, dp=8, sp=True, mbs=1), gbs=16)
    b = _step(lay=Layout(tp=4, pp=1, dp=4, sp=True, mbs=1), gbs=16)
    assert b.memory["weights"] == pytest.approx(a.memory["weights"] / 2, rel=0.05)
    z = _step(lay=Layout(tp=2, pp=1, dp=8, sp=True, dist_opt=True, mbs=1), gbs=16)
    assert z.memory["optimizer"] == pytest.approx(a.memory["optimizer"] / 8)


def test_hardware_files_use_the_roofline_fallback_and_fail_in_one_line(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("memory_gb: 96\npeak_tflops: 500\nhbm_gb_s: 3000\nnetwork_gb_s: 25\n")
    hw = hardware.load_file(str(f))
    assert hw.peak_flops("bf16") == 500e12 and "gemm_efficiency" in hw.defaulted
    for text, needle in [
        ("memory_gb: 96\npeak_tflops: 500\n", "missing field 'hbm_gb_s'"),
        ("memory_gb: 96\npeak_tflops: 500\nhbm_gb_s: fast\n", "hbm_gb_s: expected a positive number"),
        ("memory_gb: 96\npeak_tflops: 500\nhbm_gb_s: 1\nhbm: 2\n", "unknown field 'hbm'"),
        ("memory_gb: [\n", "not valid YAML"),
    ]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=needle) as e:
            hardware.load_file(str(f))
        assert "\n" not in str(e.value) and str(f) in str(e.value)


def test_plan_cli_ranks_layouts_explains_and_writes_json(capsys):
    cfg = str(ROOT / "examples" / "crystal_7b.yaml")
    assert main(["plan", "--config", cfg, "--gpus", "16", "--gpu", "h100", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "whole run: 3 phase(s), 321,836 steps, 1.39 T tokens" in out and "GPU-hours" in out
    assert main(["plan", "--config", cfg, "--gpus", "16", "--gpu", "h100", "--explain", "1"]) == 0
    out = capsys.readouterr().out
    assert "by op class" in out and "pipeline bubble" in out and "exposed" in out
    assert main(["plan", "--config", cfg, "--gpus", "16", "--gpu", "h100", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    best = doc["layouts"][0]
    assert best["fits"] and best["tp"] * best["pp"] * best["dp"] == 16 and best["exact"]
    assert doc["best_gpu_hours"] == pytest.approx(doc["best_days"] * 24 * 16)


def test_every_plan_option_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = capsys.readouterr().out
    for opt in ("--config", "--gpus", "--gpu", "--hardware", "--nodes-of", "--explain", "--json", "--top"):
        line = next(x for x in text.splitlines() if x.strip().startswith(opt))
        assert len(line.split(None, 2)) >= 2, f"{opt} has no help"
