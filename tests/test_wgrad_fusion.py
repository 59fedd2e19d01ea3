"""Gradient-accumulation fusion on the CPU (`impl="torch"`: fp32 addmm of the bf16 inputs into
main_grad): the weight gradient lands in main_grad with no bf16 .grad, the bucket hook still counts
every micro-batch, and the result equals the unfused path within the bf16 rounding that the unfused
path adds (its weight gradient is rounded to bf16 before the add). On 2 tensor-parallel gloo ranks
with sequence parallelism the column/row layers train to the same losses within that noise.
The cuBLASLt path is compared on a GPU (megacrystal/kernel_checks.py, run by tests/test_cuda_kernels_gpu.py)."""

import torch

from megacrystal.engine.engine import Engine
from megacrystal.model import wgrad_fusion
from megacrystal.model.param_spec import param_spec
from megacrystal.parallel.grad_buffers import GradBuffers
from megacrystal.parallel.state import build_grid
from tests.dist import run_ranks
from tests.model_util import tiny_model
from tests.parallel_cases import data, make_cfg, split


def _grads(fused: bool, micro: int = 2):
    cfg, model = tiny_model(seed=5)
    model = model.to(torch.bfloat16).train()
    buffers = GradBuffers(list(model.named_parameters()), build_grid(make_cfg([])), bucket_size_mb=0.01)
    n = wgrad_fusion.enable([model], "torch") if fused else 0
    gen = torch.Generator().manual_seed(1)
    buffers.start_step(micro)
    for _ in range(micro):
        tokens = torch.randint(0, cfg.vocab_size, (2, 17), generator=gen)
        model(tokens=tokens[:, :-1], labels=tokens[:, 1:]).sum().backward()
    pending = [b.pending for b in buffers.buckets]
    return model, n, pending


def test_fused_wgrad_accumulates_into_main_grad():
    ref, _, _ = _grads(False)
    got, n, pending = _grads(True)
    assert n == 2 * 5  # qkv, proj, up, gate, down of each of the 2 layers
    assert pending == [0] * len(pending)  # the hook ran once per weight per micro-batch
    fused = {name for name, p in got.named_parameters() if param_spec(p).wgrad_fusion}
    assert fused and all(".embed" not in f and "head" not in f for f in fused)
    ref_p = dict(ref.named_parameters())
    for name, p in got.named_parameters():
        want, have = ref_p[name].main_grad, p.main_grad
        if name in fused:
            assert p.grad is None
            assert not torch.equal(want, have), name  # the unfused path rounds to bf16 on the way
        # bf16 rounding of each micro-batch's weight gradient: <= 2^-8 relative per element and add
        tol = 2**-7 * want.abs().max().item() + 1e-6
        assert (want - have).abs().max().item() <= tol, name


def _tp_losses(rank, world, fused: bool):
    e = Engine(
        make_cfg(["parallel.tp=2", "parallel.sequence_parallel=true", "train.precision=bf16"]), torch.device("cpu")
    )
    if fused:
        assert wgrad_fusion.enable(e.chunks, "torch") == 4 * 5
    g = e.grid
    return [e.train_step(split(b, g.dp_rank, g.dp_size, 2), 1e-3)["loss"] for b in data(steps=2)]


def _tp_both(rank, world):
    return _tp_losses(rank, world, False), _tp_losses(rank, world, True)


def test_fused_wgrad_in_tensor_parallel_layers_trains_the_same():
    for plain, fused in run_ranks(_tp_both, 2, timeout=240):
        assert plain[0] == fused[0]  # the first forward precedes any update
        assert abs(plain[1] - fused[1]) <= 2e-2 * abs(plain[1])  # bf16 noise of one update
