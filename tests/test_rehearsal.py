"""`megacrystal rehearse`: the launch layouts families pass, and the memory of each rank adds up.

Each test plays a real launch of the 7B recipe (or a 70B-shaped LLaMA) on the meta device in a fake
world, one optimizer step, with stand-in data (the configured files are not on a CI machine).
"""

from __future__ import annotations

import math

from megacrystal.config import load_config
from megacrystal.model.transformer import serial_layout
from megacrystal.rehearsal import rehearse

CRYSTAL = "examples/crystal_7b.yaml"
LLAMA_70B = [
    "model.family=llama",
    "model.num_layers=80",
    "model.hidden_size=8192",
    "model.num_heads=64",
    "model.num_kv_heads=8",
    "model.ffn_hidden_size=28672",
    "model.vocab_size=128256",
    "model.max_seq_len=4096",
    "data.seq_length=4096",
    "train.micro_batch_size=1",
]


def _play(workdir, world, overrides, config=CRYSTAL, gpu="h100"):
    rec = rehearse(config, world, gpu, overrides, steps=1, jobs=2, workdir=workdir)
    assert rec["verdict"] == "pass", "\n".join(rec["lines"])
    return rec


def _state_bytes(rec):
    """Per rank: what the tracker counted at the peak, and what the engine's buffers imply."""
    for r in rec["ranks"]:
        b, s = r["memory"]["peak_breakdown"], r["state"]
        yield r, b, s


def test_crystal_7b_tp1_dp8_zero(rehearsal_workdir):
    over = ["parallel.tp=1", "parallel.sequence_parallel=false", "parallel.distributed_optimizer=true"]
    rec = _play(rehearsal_workdir, 8, over)
    assert rec["played"]["ranks"] == [0, 7]
    assert rec["micro_batches"] == dict(configured=132, rehearsed=2, cap=2)
    cfg = load_config(CRYSTAL, over)
    # the reference: the serial model's padded parameter count (tp=1, pp=1: every rank holds it all)
    n = sum(math.prod(shape) for shape, _ in serial_layout(cfg.model).values())
    dp = 8
    for r, b, s in _state_bytes(rec):
        assert s["parameters"] == n
        buf = s["param_buffer"]  # the contiguous buffer the bf16 parameters view, padded per bucket
        assert n <= buf <= n + 64 * 64 * dp and buf % (64 * dp) == 0
        assert b["weights"] == 2 * buf  # bf16
        assert b["grads"] == 4 * s["grad_buffer"] == 4 * buf  # fp32 main grads
        assert b["optimizer"] == 12 * buf // dp  # fp32 master + two moments, this rank's 1/dp slice
        assert r["steps"][0]["flops"]["matmul"] > 0 and r["steps"][0]["flops"]["attention"] > 0
        ops = {(c["op"], c["group"]) for c in r["steps"][0]["collectives"]}
        assert ("reduce_scatter_single", "dp") in ops or ("reduce_scatter_tensor", "dp") in ops
        assert any(op.startswith("all_gather") and g == "dp" for op, g in ops)  # the ZeRO parameter gather


def test_crystal_7b_tp2_pp2_dp2_sequence_parallel(rehearsal_workdir):
    over = ["parallel.tp=2", "parallel.pp=2", "parallel.sequence_parallel=true", "parallel.distributed_optimizer=false"]
    rec = _play(rehearsal_workdir, 8, over)
    assert rec["played"]["ranks"] == list(range(8))
    for r, b, s in _state_bytes(rec):
        n, k = s["parameters"], s["parameter_tensors"]  # separate tensors: each rounded to 512-byte blocks
        assert 0 <= b["weights"] - 2 * n < 512 * k  # bf16
        assert b["grads"] == 4 * s["grad_buffer"]
        assert 0 <= b["optimizer"] - 12 * n < 3 * 512 * k  # replicated: fp32 master + two moments per parameter
        step = r["steps"][0]
        assert step["p2p"]["sends"] > 0 and step["p2p"]["send_bytes"] == step["p2p"]["recv_bytes"]
        tp_ops = {c["op"] for c in step["collectives"] if c["group"] == "tp"}
        assert tp_ops >= {"all_reduce"} and any(op.startswith("all_gather") for op in tp_ops)  # sp gathers
        assert len(step["host_reads"]) == 2  # the token count before the backward, the norm before the update


def test_crystal_7b_tp4_pp4_vpp2_dp4_zero_64_ranks(rehearsal_workdir):
    over = ["parallel.tp=4", "parallel.pp=4", "parallel.vpp=2", "parallel.distributed_optimizer=true"]
    rec = _play(rehearsal_workdir, 64, over)
    assert rec["micro_batches"]["rehearsed"] == 16  # 2·pp·vpp
    assert len(rec["ranks"]) == 16  # every stage x first/last tp x first/last dp, of 64
    first = next(r for r in rec["ranks"] if r["coords"]["pp"] == 0 and r["coords"]["tp"] == 0)
    last = next(r for r in rec["ranks"] if r["coords"]["pp"] == 3 and r["coords"]["tp"] == 0)
    # the first stage holds more micro-batches in flight than the last: more activation memory
    assert first["memory"]["peak_breakdown"]["activations"] > last["memory"]["peak_breakdown"]["activations"]


def test_llama_70b_shape_tp8_pp8_vpp2_dp2(rehearsal_workdir):
    over = LLAMA_70B + ["parallel.tp=8", "parallel.pp=8", "parallel.vpp=2", "parallel.sequence_parallel=true"]
    over += ["train.eval_interval=0"]  # the other layouts play the evaluation; this one is the largest
    rec = _play(rehearsal_workdir, 128, over)
    assert rec["model"]["kv_heads"] == 8 and rec["layout"]["dp"] == 2
    peak = max(r["memory"]["peak_bytes"] for r in rec["ranks"])
    assert peak < rec["gpu"]["usable_bytes"]
