"""LayerNorm (weight+bias) and RMSNorm (weight): one entry point, `norm(x, weight, bias, eps, rms)`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import widen


def norm_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, rms: bool
) -> torch.Tensor:
    """fp32 statistics, output in x's dtype."""
    xf = widen(x)
    if rms:
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * widen(weight)
        if bias is not None:
            y = y + widen(bias)
        return y.to(x.dtype)
    y = F.layer_norm(xf, (x.shape[-1],), widen(weight), None if bias is None else widen(bias), eps)
    return y.to(x.dtype)


def norm_apex(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, rms: bool) -> torch.Tensor:
    """apex's fused CUDA norm (used only with `model.use_apex_norm` and apex importable)."""
    from apex.normalization.fused_layer_norm import fused_layer_norm_affine, fused_rms_norm_affine

    shape = (x.shape[-1],)
    if rms:
        y = fused_rms_norm_affine(x, weight, shape, eps)
        return y + bias if bias is not None else y
    return fused_layer_norm_affine(x, weight, bias, shape, eps)
