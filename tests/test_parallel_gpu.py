"""The engine on a CUDA device (skipped without one): same losses as on the CPU, and bf16 training
with fp32 masters. Run by benchmarks/gpu_check.sh on a GPU machine."""

import pytest
import torch

from megacrystal.engine.engine import Engine
from tests.parallel_cases import LR, data, make_cfg, split, state_problems

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(autouse=True)
def _no_tf32():
    """Exact fp32 matmuls on the GPU for these comparisons; the process-wide flag is restored after."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _run(overrides, device, steps=3):
    e = Engine(make_cfg(overrides), torch.device(device))
    losses = [e.train_step(split(b, 0, 1, 2), LR) for b in data(steps=steps)]
    return losses, e.full_model_state()


@pytest.mark.parametrize("family", ["crystal", "llama"])
def test_cuda_engine_equals_cpu_engine(family):
    ov = [f"model.family={family}", "model.attention_backend=math"]
    cpu, cpu_state = _run(ov, "cpu")
    gpu, gpu_state = _run(ov, "cuda")
    for a, b in zip(gpu, cpu, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    problems = state_problems(family, cpu_state, gpu_state, make_cfg(ov).model, rtol=1e-4)
    assert not problems, "\n".join(problems)


def test_cuda_bf16_with_distributed_optimizer_tracks_fp32():
    fp32, _ = _run([], "cuda", steps=4)
    bf16, _ = _run(["train.precision=bf16", "parallel.distributed_optimizer=true"], "cuda", steps=4)
    for a, b in zip(bf16, fp32, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-2)
