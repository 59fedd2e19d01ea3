"""The whole model with the Triton kernels (compiled on a GPU, interpreted on CPU) against the torch
reference ops: same loss and gradients."""

import pytest
import torch

from megacrystal.config import ModelConfig
from megacrystal.model.mup import init_parameters
from megacrystal.model.transformer import Transformer
from tests.ops_util import DEVICE, need_triton


@pytest.mark.parametrize("family,extra", [("crystal", {}), ("llama", {"num_kv_heads": 2})])
def test_triton_model_matches_torch_model(family, extra):
    need_triton()
    losses, grads = {}, {}
    x = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    for kernels in ("torch", "triton"):
        cfg = ModelConfig(
            family=family,
            preset="tiny",
            num_layers=2,
            vocab_size=1000,
            kernels=kernels,
            attention_backend="math",
            **extra,
        ).resolve()
        m = Transformer(cfg).to(DEVICE)
        init_parameters(m, cfg, seed=1)
        loss = m(x, labels=x.roll(-1, 1))
        loss.mean().backward()
        losses[kernels] = loss.detach()
        grads[kernels] = {n: p.grad for n, p in m.named_parameters()}
    torch.testing.assert_close(losses["triton"], losses["torch"], rtol=1e-5, atol=1e-5)
    for n, g in grads["torch"].items():
        torch.testing.assert_close(grads["triton"][n], g, rtol=1e-4, atol=1e-5, msg=n)
