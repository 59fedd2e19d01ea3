"""The CUDA kernels on a GPU (skipped without CUDA or without the built library; benchmarks/gpu_check.sh
builds it and runs these): the fused AdamW against torch.optim.AdamW and the project's foreach path on
random buffers (unaligned segments, ZeRO-style shards, several muP groups, clipping, bf16 copy), the
engine with optim.impl=cuda against impl=torch, the fused weight gradient against the unfused one,
and 20 bf16 training steps with fusion against the noise floor of two unfused runs."""

import pytest
import torch

from megacrystal.compiled import cuda_kernels
from megacrystal.compiled.cuda_kernels import adamw_scalars
from megacrystal.engine.engine import Engine
from megacrystal.model.wgrad_fusion import accumulate_wgrad
from megacrystal.optim.adamw import adamw_
from megacrystal.optim.fused_adamw import chunk_table
from tests.parallel_cases import data, make_cfg, split

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
B1, B2, EPS = 0.9, 0.95, 1e-9


@pytest.fixture(scope="module")
def lib():
    k = cuda_kernels.library()
    if k is None:
        pytest.skip(f"CUDA kernels {cuda_kernels.why_missing()}")
    return k


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


@pytest.mark.parametrize("steps", [1, 5])
def test_adamw_kernel_equals_torch_adamw_single_group(lib, steps):
    n, lr, wd = 1_000_003, 3e-4, 0.1
    p, g, m, v = _state(n, 0)
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
    assert ulps(mine, ref.detach()) <= steps and ulps(em, st["exp_avg"]) <= 1 and ulps(ev, st["exp_avg_sq"]) <= 1
    assert torch.equal(copy, mine.to(torch.bfloat16)) and flag.item() == 0


def test_adamw_kernel_on_shards_with_mup_groups_and_clip(lib):
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
            adamw_(*[[t[s] for s in sl] for t in (want[0], want[1], want[2], want[3])],
                   step=step, lr=lr, beta1=B1, beta2=B2, eps=EPS, weight_decay=wd)  # fmt: skip
        copy = torch.empty(hi - lo, dtype=torch.bfloat16, device="cuda")
        flag = torch.zeros(1, dtype=torch.int32, device="cuda")
        chunks = torch.tensor(chunk_table(pieces), device="cuda")
        sc = [adamw_scalars(lr, wd, step, B1, B2, EPS) for lr, wd in hp]
        lib.adamw_flat(p, g, m, v, copy, chunks, sc, B1, B2, clip, flag)
        assert ulps(p, want[0]) <= 1 and ulps(m, want[2]) <= 1 and ulps(v, want[3]) <= 1
        assert torch.equal(copy, p.to(torch.bfloat16))
        g[7] = float("inf")
        lib.adamw_flat(p, g, m, v, copy, chunks, sc, B1, B2, clip, flag)
        assert flag.item() == 1


def _engine_run(overrides, steps):
    e = Engine(make_cfg(overrides), torch.device("cuda"))
    mb = e.cfg.train.micro_batch_size
    out = [e.train_step(split(b, 0, 1, mb), 1e-3)["loss"] for b in data(steps=steps)]
    return out, {n: p.detach().float().clone() for m in e.chunks for n, p in m.named_parameters()}


@pytest.mark.parametrize("zero", ["true", "false"])
def test_engine_fused_optimizer_equals_torch_path(lib, zero):
    base = ["train.precision=bf16", f"parallel.distributed_optimizer={zero}", "optim.clip_grad=0.05"]
    torch_losses, torch_params = _engine_run(base + ["optim.impl=torch"], 4)
    cuda_losses, cuda_params = _engine_run(base + ["optim.impl=cuda"], 4)
    assert cuda_losses == pytest.approx(torch_losses, rel=1e-3)
    for n, p in torch_params.items():  # bf16 copies of masters within an ulp or two of each other
        assert (cuda_params[n] - p).abs().max().item() <= 2**-6 * p.abs().max().item() + 1e-6, n


@pytest.mark.parametrize("shape", [(4096, 2048, 5632), (8192, 6144, 2048), (1000, 300, 77)])
def test_fused_wgrad_equals_unfused(lib, shape):
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
        assert err <= 1e-5 * t**0.5 * scale, (impl, err)  # fp32 accumulation
        assert err <= (unfused.double() - exact).abs().max().item() * 1.01, impl  # never worse than unfused


def test_twenty_steps_with_fusion_match_unfused_within_bf16_noise(lib):
    ov = [
        "train.precision=bf16",
        "model.num_layers=2",
        "model.hidden_size=256",
        "model.num_heads=4",
        "model.ffn_hidden_size=512",
    ]
    plain, _ = _engine_run(ov + ["model.grad_accum_fusion=off"], 20)
    # the noise floor: the same math with another micro-batch split (other bf16 rounding of the sums)
    other, _ = _engine_run(ov + ["model.grad_accum_fusion=off", "train.micro_batch_size=4"], 20)
    fused, _ = _engine_run(ov + ["model.grad_accum_fusion=cuda"], 20)
    noise = max(abs(a - b) for a, b in zip(plain, other, strict=True))
    diff = max(abs(a - b) for a, b in zip(plain, fused, strict=True))
    assert diff <= 3 * noise + 1e-4, (diff, noise)
