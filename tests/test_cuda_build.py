"""The CUDA kernels' build (nvcc + CMake, no GPU needed) and the C ABI's argument checks, and the
selection of `optim.impl` / `model.grad_accum_fusion` with the library absent."""

import ctypes

import pytest
import torch

from megacrystal.compiled import build as cuda_build
from megacrystal.compiled import cuda_kernels
from megacrystal.compiled import select as cuda_select
from megacrystal.config import ConfigError
from tests.parallel_cases import make_cfg


@pytest.fixture(scope="module")
def built_lib(tmp_path_factory):
    if cuda_build.find_nvcc() is None:
        pytest.skip("no CUDA toolkit (nvcc) on this machine: the CUDA sources cannot be compiled here")
    if cuda_build.find_cmake() is None:
        pytest.skip("no cmake on this machine")
    # one architecture keeps the test cheap; benchmarks/gpu_check.sh builds the sm_80/90/100 fatbin
    return cuda_build.build(tmp_path_factory.mktemp("cuda"), archs="80", quiet=True)


@pytest.fixture
def lib_at(monkeypatch):
    def use(path):
        monkeypatch.setenv("MEGACRYSTAL_CUDA_LIB", str(path))
        cuda_kernels.reset()

    yield use
    cuda_kernels.reset()


def test_cuda_sources_build_and_load_without_a_gpu(built_lib, lib_at):
    lib_at(built_lib)
    k = cuda_kernels.library()
    assert k is not None, cuda_kernels.why_missing()
    assert k.abi == cuda_kernels.ABI_VERSION
    assert len(k.build_id) == 16 and k.build_id != "unknown"
    # the ABI validates before touching the GPU: a bad call fails with a message, no launch
    args = cuda_kernels._AdamWArgs()
    args.n_groups = 0
    rc = k.lib.mc_adamw_flat(None, None, None, None, None, 0, None, 1, ctypes.byref(args), None, None)
    assert rc == 2 and "n_groups" in k.lib.mc_last_error().decode()
    args.n_groups = 1
    rc = k.lib.mc_adamw_flat(None, None, None, None, None, 1, None, 1, ctypes.byref(args), None, None)
    assert rc == 2 and "model_copy is null" in k.lib.mc_last_error().decode()
    rc = k.lib.mc_wgrad_accum_bf16(None, None, None, 1, 1, 1, None, 0, None)
    assert rc == 4 and "mc_wgrad_init" in k.lib.mc_last_error().decode()
    assert k.lib.mc_wgrad_init(b"/nonexistent/libcublasLt.so") == 4


def test_missing_library_keeps_torch_paths(lib_at, tmp_path):
    lib_at(tmp_path / "libmegacrystal_cuda.so")
    assert cuda_kernels.library() is None
    assert "not built" in cuda_kernels.why_missing() and "megacrystal.compiled.build" in cuda_kernels.why_missing()
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert cuda_select.resolve_optim_impl("auto", cpu) == "torch"
    assert cuda_select.resolve_optim_impl("auto", gpu) == "torch"  # not built: auto never picks it
    assert cuda_select.resolve_optim_impl("torch", gpu) == "torch"
    with pytest.raises(RuntimeError, match="optim.impl=cuda: needs a CUDA device"):
        cuda_select.resolve_optim_impl("cuda", cpu)
    with pytest.raises(RuntimeError, match="optim.impl=cuda: the CUDA kernels are not built"):
        cuda_select.resolve_optim_impl("cuda", gpu)
    bf16, fp32 = torch.bfloat16, torch.float32
    assert cuda_select.resolve_grad_accum_fusion("auto", gpu, bf16) == "off"
    assert cuda_select.resolve_grad_accum_fusion("auto", cpu, bf16) == "off"
    assert cuda_select.resolve_grad_accum_fusion("on", gpu, bf16) == "torch"  # torch's mixed-dtype addmm
    assert cuda_select.resolve_grad_accum_fusion("on", gpu, fp32) == "off"  # fp32 accumulates in place anyway
    with pytest.raises(RuntimeError, match="grad_accum_fusion=cuda: the CUDA kernels are not built"):
        cuda_select.resolve_grad_accum_fusion("cuda", gpu, bf16)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        cuda_select.resolve_grad_accum_fusion("torch", cpu, bf16)
    with pytest.raises(RuntimeError, match="needs bf16 parameters"):
        cuda_select.resolve_grad_accum_fusion("cuda", gpu, fp32)
    with pytest.raises(ValueError, match="optim.impl: expected one of"):
        cuda_select.resolve_optim_impl("apex", cpu)


def test_cuda_paths_that_cannot_run_are_refused_or_fall_back(monkeypatch):
    gpu, fp64, bf16 = torch.device("cuda"), torch.float64, torch.bfloat16
    # the fused AdamW keeps fp32 state: fp64 never reaches it (auto: torch; cuda: refused)
    assert cuda_select.resolve_optim_impl("auto", gpu, dtype=fp64) == "torch"
    with pytest.raises(RuntimeError, match="optim.impl=cuda: the fused CUDA AdamW keeps fp32 state"):
        cuda_select.resolve_optim_impl("cuda", gpu, dtype=fp64)
    with pytest.raises(ConfigError, match=r"optim.impl: cuda with train.precision=fp64"):
        make_cfg(["optim.impl=cuda", "train.precision=fp64"])
    # torch.addmm(out_dtype=) arrived in torch 2.8: an older torch refuses `torch` fusion, `on` turns it off
    assert cuda_select.addmm_out_dtype_ok("2.8.0") and cuda_select.addmm_out_dtype_ok("2.11.0+cu128")
    assert not cuda_select.addmm_out_dtype_ok("2.7.1+cu126") and not cuda_select.addmm_out_dtype_ok("2.4.0")
    monkeypatch.setattr(cuda_kernels, "library", lambda quiet=False: None)
    monkeypatch.setattr(torch, "__version__", "2.7.1")
    with pytest.raises(RuntimeError, match=r"grad_accum_fusion=torch: needs torch >= 2.8 .*2.7.1"):
        cuda_select.resolve_grad_accum_fusion("torch", gpu, bf16)
    assert cuda_select.resolve_grad_accum_fusion("on", gpu, bf16) == "off"


def test_the_test_only_device_group_backend_is_validated():
    from megacrystal.parallel.init import pick_backend

    cfg = make_cfg(["parallel.backend=cuda:gloo"])
    assert cfg.parallel.backend == "cuda:gloo"
    assert pick_backend(cfg, torch.device("cuda", 0)) == "cuda:gloo"
    with pytest.raises(ConfigError, match="parallel.backend: cuda:gloo needs CUDA devices"):
        pick_backend(cfg, torch.device("cpu"))
    with pytest.raises(ConfigError, match="parallel.backend: expected one of"):
        make_cfg(["parallel.backend=cuda:nccl"])


def test_config_fields_are_validated():
    cfg = make_cfg([])
    assert (cfg.optim.impl, cfg.model.grad_accum_fusion) == ("auto", "auto")
    with pytest.raises(ConfigError, match="optim.impl: expected one of"):
        make_cfg(["optim.impl=fast"])
    with pytest.raises(ConfigError, match="model.grad_accum_fusion: expected one of"):
        make_cfg(["model.grad_accum_fusion=always"])
    assert make_cfg(["model.grad_accum_fusion=off"]).model.grad_accum_fusion == "off"  # not YAML's False
    assert make_cfg(["model.grad_accum_fusion=on"]).model.grad_accum_fusion == "on"


def test_architectures_follow_the_nvcc_version():
    assert cuda_build.supported_archs("80;90;100", (13, 0)) == "80;90;100"
    assert cuda_build.supported_archs("80;90;100", (12, 4)) == "80;90"  # sm_100 needs CUDA 12.8
    assert cuda_build.supported_archs("100a", (12, 6)) == ""
