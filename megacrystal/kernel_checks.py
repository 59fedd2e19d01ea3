"""The checks of the CUDA kernels (kernels/cuda/) on this machine's GPU, shipped with the package:
`megacrystal doctor --verify` runs them and records the result (compiled/record.py), and
tests/test_cuda_kernels_gpu.py runs the same functions.

Each check takes the loaded library and raises CheckFailed (one line) when the kernel disagrees:
the fused AdamW against torch.optim.AdamW and the project's foreach path on random buffers (unaligned
segments, ZeRO-style shards, several muP groups, clipping, bf16 copy, non-finite flag), the engine with
optim.impl=cuda against impl=torch, the fused weight gradient against the unfused one, and 20 bf16
training steps with fusion against the noise floor of two unfused runs. Sizes are small: all of them
take seconds on one GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .compiled.cuda_kernels import adamw_scalars
from .config import load_config
from .engine.engine import Engine
from .model.wgrad_fusion import accumulate_wgrad
from .optim.adamw import adamw_
from .optim.fused_adamw import chunk_table

B1, B2, EPS = 0.9, 0.95, 1e-9
TINY = [  # the tiny model of the engine checks
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


class CheckFailed(AssertionError):
    pass


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in units of the last place between two fp32 tensors."""
    ia, ib = a.view(torch.int32).long(), b.view(torch.int32).long()
    ia = torch.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = torch.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return int((ia - ib).abs().max().item())


def _state(n, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda: torch.randn(n, device="cuda", generator=g)
    return r(), r() * 1e-2, r() * 1e-3, r().abs() * 1e-5  # master, grad, m, v


def adamw_single_group(lib, steps: int) -> None:
    n, lr, wd = 1_000_003, 3e-4, 0.1
    p, g, _, _ = _state(n, 0)
    ref = torch.nn.Parameter(p.clone())
    opt = torch.optim.AdamW([ref], lr=lr, betas=(B1, B2), eps=EPS, weight_decay=wd, foreach=True)
    copy = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    chunks = torch.tensor(chunk_table([(0, n, 0)]), device="cuda")
    flag = torch.zeros(1, dtype=torch.int32, device="cuda")
    mine, em, ev = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    for t in range(1, steps + 1):
        ref.grad = g * t
        opt.step()
        lib.adamw_flat(mine, g * t, em, ev, copy, chunks, [adamw_scalars(lr, wd, t, B1, B2, EPS)], B1, B2, 1.0, flag)
    st = opt.state[ref]
    d = (ulps(mine, ref.detach()), ulps(em, st["exp_avg"]), ulps(ev, st["exp_avg_sq"]))
    expect(d[0] <= steps and d[1] <= 1 and d[2] <= 1, f"ulps (param, m, v) vs torch.optim.AdamW: {d}")
    expect(torch.equal(copy, mine.to(torch.bfloat16)), "bf16 copy differs from the master")
    expect(flag.item() == 0, "non-finite flag set on finite data")


def adamw_shards_mup_clip(lib) -> None:
    # a bucket of 7 "parameters" of odd sizes in 3 groups, cut into 2 ZeRO shards at an odd offset
    sizes, groups = [5, 70_001, 3, 130_000, 17, 9, 65_536 * 2 + 1], [0, 1, 2, 1, 0, 2, 1]
    total = sum(sizes)
    hp = [(3e-4 * 4.0, 0.1), (3e-4 * 0.25, 0.1), (3e-4, 0.0)]  # (lr, wd) per group, as muP makes them
    step, clip = 3, 0.37
    for lo, hi in ((0, 200_013), (200_013, total)):
        p, g, m, v = _state(hi - lo, lo)
        pieces, off = [], 0
        for sz, gi in zip(sizes, groups, strict=True):
            a, z = max(lo, off), min(hi, off + sz)
            if a < z:
                pieces.append((a - lo, z - a, gi))
            off += sz
        want = [t.clone() for t in (p, g * clip, m, v)]
        for gi, (lr, wd) in enumerate(hp):
            sl = [slice(a, a + k) for a, k, x in pieces if x == gi]
            adamw_(*[[t[s] for s in sl] for t in want], step=step, lr=lr, beta1=B1, beta2=B2, eps=EPS, weight_decay=wd)
        copy = torch.empty(hi - lo, dtype=torch.bfloat16, device="cuda")
        flag = torch.zeros(1, dtype=torch.int32, device="cuda")
        chunks = torch.tensor(chunk_table(pieces), device="cuda")
        sc = [adamw_scalars(lr, wd, step, B1, B2, EPS) for lr, wd in hp]
        lib.adamw_flat(p, g, m, v, copy, chunks, sc, B1, B2, clip, flag)
        d = (ulps(p, want[0]), ulps(m, want[2]), ulps(v, want[3]))
        expect(max(d) <= 1, f"shard [{lo}, {hi}): ulps (param, m, v) vs adamw_: {d}")
        expect(torch.equal(copy, p.to(torch.bfloat16)), f"shard [{lo}, {hi}): bf16 copy differs from the master")
        g[7] = float("inf")
        lib.adamw_flat(p, g, m, v, copy, chunks, sc, B1, B2, clip, flag)
        expect(flag.item() == 1, f"shard [{lo}, {hi}): an inf gradient did not set the non-finite flag")


def _batches(steps: int, n: int = 8, s: int = 16, vocab: int = 300) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        t = torch.randint(0, vocab, (n, s + 1), generator=g)
        out.append(dict(tokens=t[:, :-1], labels=t[:, 1:], loss_mask=(torch.rand(n, s, generator=g) > 0.2).float()))
    return out


def engine_run(overrides: list[str], steps: int) -> tuple[list[float], dict]:
    """Losses and final parameters of `steps` steps of the tiny model on one GPU."""
    e = Engine(load_config(None, TINY + overrides), torch.device("cuda"))
    mb = e.cfg.train.micro_batch_size
    losses = [
        e.train_step([{k: v[i : i + mb] for k, v in b.items()} for i in range(0, 8, mb)], 1e-3)["loss"]
        for b in _batches(steps)
    ]
    return losses, {n: p.detach().float().clone() for m in e.chunks for n, p in m.named_parameters()}


def engine_fused_optimizer(lib, zero: bool) -> None:
    base = ["train.precision=bf16", f"parallel.distributed_optimizer={str(zero).lower()}", "optim.clip_grad=0.05"]
    torch_losses, torch_params = engine_run(base + ["optim.impl=torch"], 4)
    cuda_losses, cuda_params = engine_run(base + ["optim.impl=cuda"], 4)
    for a, b in zip(cuda_losses, torch_losses, strict=True):
        expect(abs(a - b) <= 1e-3 * abs(b), f"losses fused {cuda_losses} vs torch {torch_losses}")
    for n, p in torch_params.items():  # bf16 copies of masters within an ulp or two of each other
        d = (cuda_params[n] - p).abs().max().item()
        expect(d <= 2**-6 * p.abs().max().item() + 1e-6, f"{n}: fused vs torch parameters differ by {d:.3g}")


def fused_wgrad(lib, shape: tuple[int, int, int]) -> None:
    t, out, inp = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    dy = torch.randn(t, out, device="cuda", generator=g).to(torch.bfloat16)
    x = torch.randn(t, inp, device="cuda", generator=g).to(torch.bfloat16)
    # main_grad as a view at an odd offset of a larger buffer, as a parameter's slice of the gradient buffer
    main = torch.randn(out * inp + 1, device="cuda", generator=g)[1:].view(out, inp)
    exact = main.double() + dy.double().t() @ x.double()
    unfused = main + (dy.t() @ x).float()  # the bf16 weight gradient, then the add
    scale = exact.abs().max().item()
    for impl in ("cuda", "torch"):
        got = torch.empty(out * inp + 1, device="cuda")[1:].view(out, inp).copy_(main)  # 4-byte aligned only
        accumulate_wgrad(got, dy, x, impl)
        err = (got.double() - exact).abs().max().item()
        expect(err <= 1e-5 * t**0.5 * scale, f"{impl}: error {err:.3g} beyond fp32 accumulation")
        expect(err <= (unfused.double() - exact).abs().max().item() * 1.01, f"{impl}: worse than unfused")


def steps_with_fusion(lib) -> None:
    ov = ["train.precision=bf16", "model.num_layers=2", "model.hidden_size=256", "model.num_heads=4"]
    ov += ["model.ffn_hidden_size=512"]
    plain, _ = engine_run(ov + ["model.grad_accum_fusion=off"], 20)
    # the noise floor: the same math with another micro-batch split (other bf16 rounding of the sums)
    other, _ = engine_run(ov + ["model.grad_accum_fusion=off", "train.micro_batch_size=4"], 20)
    fused, _ = engine_run(ov + ["model.grad_accum_fusion=cuda"], 20)
    noise = max(abs(a - b) for a, b in zip(plain, other, strict=True))
    diff = max(abs(a - b) for a, b in zip(plain, fused, strict=True))
    expect(diff <= 3 * noise + 1e-4, f"20 steps: fused vs unfused loss gap {diff:.3g} > 3 x noise {noise:.3g}")


CHECKS: dict[str, Callable] = {
    "adamw single group, 1 step": lambda lib: adamw_single_group(lib, 1),
    "adamw single group, 5 steps": lambda lib: adamw_single_group(lib, 5),
    "adamw ZeRO shards, muP groups, clip": adamw_shards_mup_clip,
    "engine fused optimizer (replicated)": lambda lib: engine_fused_optimizer(lib, False),
    "engine fused optimizer (ZeRO-1)": lambda lib: engine_fused_optimizer(lib, True),
    "fused wgrad 4096x2048x5632": lambda lib: fused_wgrad(lib, (4096, 2048, 5632)),
    "fused wgrad 8192x6144x2048": lambda lib: fused_wgrad(lib, (8192, 6144, 2048)),
    "fused wgrad 1000x300x77": lambda lib: fused_wgrad(lib, (1000, 300, 77)),
    "20 bf16 steps with fusion": steps_with_fusion,
}


def run_checks(lib, say: Callable[[str], None] = print) -> list[dict]:
    """Every check on the current GPU: [{name, passed, detail}], one line said per check."""
    results = []
    for name, check in CHECKS.items():
        try:
            check(lib)
            passed, detail = True, ""
        except Exception as e:  # a crash in a kernel is a failed check, reported like one
            passed, detail = False, f"{type(e).__name__}: {e}".splitlines()[0]
        results.append(dict(name=name, passed=passed, detail=detail))
        say(f"  {'ok  ' if passed else 'FAIL'} {name}{': ' + detail if detail else ''}")
    return results
