"""Shared pieces of the parallel tests: a tiny model, fixed data, a training run usable on one
process or on N gloo ranks, and the comparison against the 1-rank run.

Tolerance: the matrix runs in float64 (`train.precision=fp64`, the verification precision), where
reduction order no longer shows: losses, grad norms and every final parameter tensor within 1e-9
relative (norm-wise) of the serial run, on any CPU. A config that asks for `train.precision=fp32`
is held to a bound measured in the test instead: the fp32 noise floor is the largest difference
between the serial fp32 run and the same serial run in fp64 (how far fp32 rounding alone moves this
model after these steps, on this machine), and the bound is `NOISE_FACTOR` times it. A parallel run
only sums in another order, so it lands within that rounding of the exact result too. A fixed fp32
bound would measure the machine's BLAS, not the engine (Adam divides by sqrt(v) and amplifies
reduction-order noise). Summing the batch in another order (micro-batches of one, rows reversed) is
not enough of a floor: it leaves every per-row product as it was, and moved the tp=4 config's
serial run 25x less than tp=4 did.

One exception, by mathematics rather than by choice, in any precision: the key bias on head dims
that RoPE does not rotate adds the same number to every score of a query row, and softmax ignores
that, so its gradient is exactly zero and what the backward produces there is rounding noise; Adam
(eps 1e-9) turns noise into steps of up to lr. Those coordinates are only checked to stay within
steps * lr.
"""

from __future__ import annotations

import torch

from megacrystal.config import load_config
from megacrystal.data.context_parallel import split_micro_batch
from megacrystal.engine.engine import Engine

STEPS = 5
LR = 1e-3
RTOL = 1e-9  # fp64
NOISE_FACTOR = 20  # fp32: the bound is this many times the measured noise floor
FP32_EPS = 2.0**-24
FP64 = ["train.precision=fp64"]
BASE = [
    "model.num_layers=4",
    "model.hidden_size=32",
    "model.num_heads=4",
    "model.ffn_hidden_size=64",
    "model.vocab_size=300",
    "model.max_seq_len=32",
    "model.mup_base_width=64",
    "data.seq_length=16",
    "train.global_batch_size=8",
    "train.micro_batch_size=2",
    "parallel.bucket_size_mb=0.004",
]


def make_cfg(overrides: list[str]):
    return load_config(None, BASE + list(overrides))


def data(
    steps: int = STEPS, n: int = 8, s: int = 16, vocab: int = 300, seed: int = 0, segments: bool = False
) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        t = torch.randint(0, vocab, (n, s + 1), generator=g)
        b = dict(tokens=t[:, :-1], labels=t[:, 1:], loss_mask=(torch.rand(n, s, generator=g) > 0.2).float())
        if segments:  # two documents per row, cut at a random point: document-masked attention
            cut = torch.randint(1, s, (n, 1), generator=g)
            pos = torch.arange(s).expand(n, s)
            b["segment_ids"] = (pos >= cut).long()
            b["position_ids"] = torch.where(pos >= cut, pos - cut, pos)
        out.append(b)
    return out


def split(batch: dict, dp_rank: int, dp: int, micro: int) -> list[dict]:
    n = batch["tokens"].shape[0] // dp
    mine = {k: v[dp_rank * n : (dp_rank + 1) * n] for k, v in batch.items()}
    return [{k: v[i : i + micro] for k, v in mine.items()} for i in range(0, n, micro)]


def rank_batches(batch: dict, g, micro: int) -> list[dict]:
    """This rank's micro-batches of a global batch: its dp share, and under context parallelism its cp part."""
    return [split_micro_batch(mb, g.cp_rank, g.cp_size) for mb in split(batch, g.dp_rank, g.dp_size, micro)]


def train(overrides: list[str], batches: list[dict]) -> dict:
    """Run the steps; returns losses/grad norms (every rank) and the consolidated state (rank 0)."""
    cfg = make_cfg(overrides)
    engine = Engine(cfg, torch.device("cpu"))
    g = engine.grid
    outs = [engine.train_step(rank_batches(b, g, cfg.train.micro_batch_size), LR) for b in batches]
    return dict(losses=[o["loss"] for o in outs], norms=[o["grad_norm"] for o in outs], state=engine.full_model_state())


def run_configs(rank: int, world: int, configs: list[list[str]], batches: list[dict]) -> list[dict]:
    """Rank entry point: every config in turn on the same process group."""
    return [train(c, batches) for c in configs]


def serial_key(overrides: list[str]) -> tuple:
    return tuple(o for o in overrides if not o.startswith("parallel."))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / (b.double().norm() + 1e-30)).item()


def compare(label: str, ref: dict, got: list[dict], cfg_overrides: list[str], rtol: float = RTOL) -> list[str]:
    """Problems found (empty when the parallel run equals the serial one within `rtol`). `got`: every
    rank's result."""
    bad = []
    for r, res in enumerate(got):
        if res["losses"] != got[0]["losses"] or res["norms"] != got[0]["norms"]:
            bad.append(f"{label}: rank {r} reports {res['losses']} but rank 0 {got[0]['losses']}")
    res = got[0]
    for i, (a, b) in enumerate(zip(res["losses"], ref["losses"], strict=True)):
        if abs(a - b) > rtol * abs(b):
            bad.append(f"{label}: step {i} loss {a!r} vs serial {b!r}")
    for i, (a, b) in enumerate(zip(res["norms"], ref["norms"], strict=True)):
        if abs(a - b) > rtol * abs(b):
            bad.append(f"{label}: step {i} grad norm {a!r} vs serial {b!r}")
    return bad + state_problems(label, ref["state"], res["state"], make_cfg(cfg_overrides).model, rtol)


def state_problems(label: str, want_state: dict, have_state: dict, cfg, rtol: float = RTOL) -> list[str]:
    """Parameter tensors of `have_state` further than `rtol` (relative, norm-wise) from `want_state`."""
    if set(have_state) != set(want_state):
        return [f"{label}: state keys differ: {sorted(set(have_state) ^ set(want_state))[:5]}"]
    bad = []
    for k, want in want_state.items():
        have = have_state[k]
        if have.shape != want.shape:
            bad.append(f"{label}: {k} shape {tuple(have.shape)} vs {tuple(want.shape)}")
            continue
        e, drift = tensor_error(k, have, want, cfg)
        if drift > STEPS * LR:
            bad.append(f"{label}: {k} unrotated key bias drifted {drift} > steps*lr")
        if e > rtol:
            bad.append(f"{label}: {k} differs from serial by {e:.2e} (relative, bound {rtol:.2e})")
    return bad


def tensor_error(k: str, have: torch.Tensor, want: torch.Tensor, cfg) -> tuple[float, float]:
    """(relative norm-wise difference, largest drift of the zero-gradient key-bias entries) of parameter `k`."""
    drift = 0.0
    if k.endswith("attn.qkv.bias"):
        have, want = have.clone(), want.clone()
        zero_grad = _key_bias_passthrough(cfg, have)
        drift = (have[zero_grad] - want[zero_grad]).abs().max().item() if zero_grad.any() else 0.0
        have[zero_grad] = 0
        want[zero_grad] = 0
    return rel(have, want), drift


def _key_bias_passthrough(cfg, bias: torch.Tensor) -> torch.Tensor:
    """Mask of QKV-bias entries that are key biases on dims RoPE leaves alone."""
    d = cfg.head_dim
    group = cfg.num_heads // cfg.num_kv_heads
    mask = torch.zeros(cfg.num_kv_heads, group + 2, d, dtype=torch.bool)
    mask[:, group, int(d * cfg.rotary_fraction) :] = True
    return mask.view(-1)


def differences(a: dict, b: dict, cfg) -> list[float]:
    """Every relative difference between two results: losses, grad norms, parameter tensors."""
    out = [abs(x - y) / abs(y) for x, y in zip(a["losses"] + a["norms"], b["losses"] + b["norms"], strict=True)]
    assert set(a["state"]) == set(b["state"]) and out
    return out + [tensor_error(k, a["state"][k], b["state"][k], cfg)[0] for k in sorted(b["state"])]


def noise_floor(serial: tuple, batches: list[dict], refs: dict) -> float:
    """The fp32 noise floor of the serial fp32 run `refs[serial]`: its largest difference from the same
    run in fp64 (taken from `refs` when the matrix has it, else run and kept there); at least one fp32
    rounding step."""
    exact_key = tuple(FP64 + [o for o in serial if not o.startswith("train.precision=")])
    if exact_key not in refs:
        refs[exact_key] = train(list(exact_key), batches)
    return max(max(differences(refs[serial], refs[exact_key], make_cfg(list(serial)).model)), FP32_EPS)


def check_matrix(world: int, configs: list[list[str]], segments: bool = False, steps: int = STEPS) -> None:
    """Run `configs` on `world` gloo ranks (one spawn) and compare each with its serial run: in fp64 within
    `RTOL`; a config that sets train.precision=fp32 within `NOISE_FACTOR` times its measured noise floor."""
    from tests.dist import run_ranks

    configs = [c if "train.precision=fp32" in c else FP64 + list(c) for c in configs]
    batches = data(steps=steps, segments=segments)
    results = run_ranks(run_configs, world, (configs, batches), timeout=900)
    refs: dict[tuple, dict] = {}
    problems = []
    for i, c in enumerate(configs):
        key = serial_key(c)
        if key not in refs:
            refs[key] = train(list(key), batches)
        rtol = RTOL
        if "train.precision=fp32" in c:
            floor = noise_floor(key, batches, refs)
            rtol = NOISE_FACTOR * floor
            print(f"{' '.join(c)}: fp32 noise floor {floor:.2e}, bound {rtol:.2e}")
        problems += compare(" ".join(c), refs[key], [r[i] for r in results], list(key), rtol)
        worst = max(differences(results[0][i], refs[key], make_cfg(list(key)).model))
        print(f"{' '.join(c)}: largest relative difference from the serial run {worst:.2e}")
    assert not problems, "\n".join(problems)
