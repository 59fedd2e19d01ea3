"""The rehearsal and the planner show each overlap: where every collective of a step is issued and
waited on with the compute between (rehearsal/overlaps.py), and what each recompute choice keeps
(planner/search.py `recompute_choices_of`; the rehearsal's measured records through it)."""

from __future__ import annotations

import dataclasses

import pytest

from megacrystal.config import load_config
from megacrystal.planner import hardware
from megacrystal.planner.costs import FORMULA
from megacrystal.planner.search import plan_one, recompute_choices_of
from megacrystal.planner.shapes import Layout
from megacrystal.rehearsal import rehearse
from megacrystal.rehearsal.command import main as rehearse_main
from megacrystal.rehearsal.plan_costs import RehearsalCosts

CRYSTAL = "examples/crystal_7b.yaml"
# 8 ranks, pp2 x dp4 + ZeRO-1, 4 layers; crystal's three phases take one step each and the last one
# two more, so a step's parameter gathers are waited in the next step's forward within a phase
SMALL = ["model.num_layers=4", "parallel.pp=2", "parallel.distributed_optimizer=true", "train.eval_interval=0"]
H100 = hardware.get("h100")


def _rows(rehearsal_workdir, extra):
    rec = rehearse(CRYSTAL, 8, "h100", SMALL + extra, steps=4, jobs=2, workdir=rehearsal_workdir)
    assert rec["verdict"] == "pass", rec["lines"]
    first = next(r for r in rec["ranks"] if r["rank"] == 0)
    return first["overlaps"]


def test_overlaps_on_show_gathers_in_the_forward_and_transfers_behind_compute(rehearsal_workdir):
    rows = _rows(rehearsal_workdir, [])
    gathers = [r for r in rows if r["kind"] == "param_gather"]
    forward = [r for r in gathers if "sync_params" not in r["waited_at"] and "optim/" not in r["waited_at"]]
    assert forward, gathers  # the next forward's pre-hooks wait for the buckets
    assert any(r["tflop_between"] > 0 and r["est_hidden"] > 0 for r in forward), forward
    reduce = [r for r in rows if r["kind"] == "grad_reduce" and r["group"] == "dp"]
    assert any(r["tflop_between"] > 0 for r in reduce), reduce  # issued inside the backward
    sends = [r for r in rows if r["kind"] == "p2p" and r["op"] == "send"]
    assert any(r["tflop_between"] > 0 for r in sends), sends  # waited at a later exchange
    blocking = [r for r in rows if r["kind"] == "blocking"]
    assert blocking and all(r["tflop_between"] == 0 and r["issued_at"] == r["waited_at"] for r in blocking)
    for r in rows:
        assert r["est_transfer_ms"] >= 0 and r["calls"] >= 1 and r["never_waited"] == 0, r


def test_overlaps_off_wait_at_once(rehearsal_workdir):
    rows = _rows(rehearsal_workdir, ["parallel.overlap_param_gather=false", "parallel.overlap_p2p_comm=false"])
    gathers = [r for r in rows if r["kind"] == "param_gather"]
    assert gathers and all(r["tflop_between"] == 0 for r in gathers), gathers
    assert all("optim/" in r["waited_at"] or "sync_params" in r["waited_at"] for r in gathers), gathers
    p2p = [r for r in rows if r["kind"] == "p2p"]
    assert p2p and all(r["tflop_between"] == 0 for r in p2p), p2p
    assert all(r["est_hidden"] in (0.0, None) for r in p2p)


def test_planner_recompute_choices_save_what_the_formula_drops():
    cfg = load_config(CRYSTAL, [], validate=False)
    m = cfg.model.resolve()
    lay = Layout(tp=1, pp=1, dp=64, dist_opt=True, mbs=1)
    rows = {r["recompute"]: r for r in recompute_choices_of(cfg, lay, H100, FORMULA)}
    assert rows["none"]["current"] and not rows["full"]["current"]
    none, sel, full = (rows[k] for k in ("none", "selective", "full"))
    assert none["activations_bytes"] > sel["activations_bytes"] > full["activations_bytes"] > 0
    assert none["step_s"] < sel["step_s"] < full["step_s"]
    # pp1: one micro-batch's activations in flight; selective drops, per layer, the attention output
    # (and flash attention's fp32 log-sum-exp) and SwiGLU's output: (h + f) bf16 + 4 B per head per token
    s, f = cfg.data.seq_length, _ffn_padded(m)
    want = m.num_layers * s * ((m.hidden_size + f) * 2 + 4 * m.num_heads)
    assert none["activations_bytes"] - sel["activations_bytes"] == pytest.approx(want, rel=1e-12)
    # what selective saves is all the memory it saves (full also holds one recomputed layer's tensors)
    assert none["memory_bytes"] - sel["memory_bytes"] == pytest.approx(want, rel=1e-9)
    assert full["memory_bytes"] < sel["memory_bytes"]
    p = plan_one(cfg, dataclasses.replace(lay, recompute="selective"), H100)
    assert p.memory["activations"] == sel["activations_bytes"]


def _ffn_padded(m) -> int:
    from megacrystal.model.padding import pad_to

    return pad_to(m.ffn_hidden_size, 64)


def test_rehearse_prints_overlaps_and_measured_recompute_choices(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the layer shapes rehearsed afresh
    over = SMALL + ["parallel.tp=2", "parallel.sequence_parallel=true", "model.recompute=selective"]
    code = rehearse_main(["--config", CRYSTAL, "--gpus", "16", "--steps", "4", "--workdir", str(tmp_path / "w"), *over])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "collectives of rank 0's steps: where issued, where waited" in out
    assert "param_gather" in out and "grad_reduce" in out and "blocking" in out
    lines = [x for x in out.splitlines() if x.lstrip(" *").split(" ")[0] in ("none", "selective", "full")]
    assert [x.lstrip(" *").split()[0] for x in lines] == ["none", "selective", "full"]
    assert lines[1].startswith(" *")  # the rehearsed choice
    cfg = load_config(CRYSTAL, over, validate=False)
    src = RehearsalCosts(cfg, cache=tmp_path / "cache" / "megacrystal" / "plan-rehearsal")
    lay = Layout(tp=2, pp=2, dp=4, sp=True, dist_opt=True, mbs=cfg.train.micro_batch_size, recompute="selective")
    rows = {r["recompute"]: r for r in recompute_choices_of(cfg, lay, H100, src)}
    assert src.rehearsed == 0  # the command measured and cached them
    assert (
        rows["none"]["activations_bytes"] > rows["selective"]["activations_bytes"] > rows["full"]["activations_bytes"]
    )
