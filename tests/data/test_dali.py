"""The DALI backend gives the torch backend's batches (CPU pipeline, device_id=None)."""

import pytest
import torch

from megacrystal.data.loader import StepLoader, build_data

from .conftest import make_config


def test_dali_batches_equal_torch_batches(corpus, tmp_path):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI (extra 'dali', nvidia-dali-cuda130) not installed")
    cfg = make_config(corpus, tmp_path)
    _, loader, _ = build_data(cfg, with_validation=False)
    ref = list(StepLoader(loader.dataset, 0, 2, 2, 8))
    dali = StepLoader(loader.dataset, 0, 2, 2, 8, backend="dali")
    dali.load_state_dict({"step": 0})
    got = list(dali)
    assert len(got) == len(ref)
    for a, b in zip(got, ref, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.keys() == y.keys()
            for k in x:
                if torch.is_tensor(x[k]):
                    assert torch.equal(x[k].cpu(), y[k]), k
                else:
                    assert x[k] == y[k], k


def test_missing_dali_is_a_clear_error(monkeypatch, corpus, tmp_path):
    import builtins

    real = builtins.__import__

    def no_dali(name, *a, **k):
        if name.startswith("nvidia.dali") or name == "nvidia":
            raise ImportError("No module named 'nvidia.dali'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    cfg = make_config(corpus, tmp_path)
    _, loader, _ = build_data(cfg, with_validation=False)
    dali = StepLoader(loader.dataset, 0, 1, 2, 8, backend="dali")
    with pytest.raises(ImportError, match=r"data\.backend: dali needs NVIDIA DALI .*nvidia-dali-cuda130"):
        next(iter(dali))
    from megacrystal.config import ConfigError
    from megacrystal.data.plan import make_plan

    cfg.data.backend = "dali"
    with pytest.raises(ConfigError, match=r"data\.backend: dali needs NVIDIA DALI"):
        make_plan(cfg)
