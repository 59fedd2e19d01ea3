"""The reshard matrix: save at step 3 under layout A, resume under layout B, and steps 4-6 equal the
uninterrupted A run (in fp64 within `parallel_cases.RTOL` = 1e-9, a bound that holds on any CPU;
bf16: twice the gap, in losses and in final weights, between from-scratch runs of A and B); the state B loads is A's bit for bit
(B saves it again at once and both checkpoints are compared tensor by tensor, moments included)."""

from __future__ import annotations

from tests.checkpoint_cases import resume_problems, run_jobs, save_run
from tests.dist import run_ranks
from tests.parallel_cases import RTOL, rel

L8 = ["model.num_layers=8"]
ZERO = "parallel.distributed_optimizer=true"
BF16 = "train.precision=bf16"
F64 = "train.precision=fp64"


def _state_gap(a: dict, b: dict) -> float:
    """Largest norm-wise relative difference of two consolidated states (the RoPE-passthrough key bias,
    pure rounding noise by construction, left out as `state_problems` does)."""
    return max(rel(b[k], a[k]) for k in a if not k.endswith("attn.qkv.bias"))


def test_reshard_matrix_on_four_ranks(tmp_path):
    ck = "checkpoints/step_00000003"
    pairs = [
        ("tp2pp2", [F64, "parallel.tp=2", "parallel.pp=2"], "dp4", [F64, "parallel.dp=4"], []),
        ("dp4zero", [F64, "parallel.dp=4", ZERO], "tp2dp2", [F64, "parallel.tp=2"], []),
        ("pp4vpp2", [F64, *L8, "parallel.pp=4", "parallel.vpp=2"], "pp2dp2", [F64, *L8, "parallel.pp=2"], L8),
        ("bf16tp2zero", [BF16, "parallel.tp=2", ZERO], "bf16pp2tp2", [BF16, "parallel.pp=2", "parallel.tp=2"], [BF16]),
    ]
    jobs = []
    for a_name, a, b_name, b, _ in pairs:
        jobs += [
            ("save", a, str(tmp_path / a_name)),
            ("resume", b, str(tmp_path / a_name / ck), str(tmp_path / b_name)),
        ]
    # bf16 noise floor: the same two layouts from scratch, uninterrupted
    jobs.append(("save", [BF16, "parallel.pp=2", "parallel.tp=2"], str(tmp_path / "bf16-b-full")))
    res = run_ranks(run_jobs, 4, (jobs,), timeout=1500)[0]
    bf16_gap = max(abs(x - y) / abs(x) for x, y in zip(res[6]["losses"], res[8]["losses"], strict=True))
    bf16_state_gap = _state_gap(res[6]["state"], res[8]["state"])
    problems = []
    for i, (a_name, _, b_name, _, serial) in enumerate(pairs):
        bf16 = BF16 in serial
        rtol = max(RTOL, 2 * bf16_gap) if bf16 else RTOL
        state_rtol = max(RTOL, 2 * bf16_state_gap) if bf16 else RTOL
        label = f"{a_name} -> {b_name}"
        problems += resume_problems(
            label, tmp_path, a_name, b_name, res[2 * i], res[2 * i + 1], serial, rtol, state_rtol
        )
    assert not problems, "\n".join(problems)


def _eight(rank, world, serial_ckpt, out):
    from tests.checkpoint_cases import batches as make
    from tests.checkpoint_cases import resume_run, save_run

    bs = make()
    big = [F64, "parallel.tp=2", "parallel.pp=2", "parallel.sequence_parallel=true", ZERO]
    return [resume_run(big, serial_ckpt, out + "/big-resumed", bs), save_run(big, out + "/big", bs)]


def test_one_rank_to_tp2_pp2_dp2_sp_zero_and_back(tmp_path):
    from tests.checkpoint_cases import batches, resume_run

    bs = batches()
    serial = save_run([F64], str(tmp_path / "serial"), bs)  # this process, no process group
    ck = "checkpoints/step_00000003"
    resumed, big = run_ranks(_eight, 8, (str(tmp_path / "serial" / ck), str(tmp_path)), timeout=1500)[0]
    back = resume_run([F64], str(tmp_path / "big" / ck), str(tmp_path / "back"), bs)
    problems = resume_problems("1 -> tp2pp2dp2+sp+zero", tmp_path, "serial", "big-resumed", serial, resumed, [])
    problems += resume_problems("tp2pp2dp2+sp+zero -> 1", tmp_path, "big", "back", big, back, [])
    assert not problems, "\n".join(problems)
