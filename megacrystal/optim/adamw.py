"""AdamW with decoupled weight decay and wide master weights (Crystal: beta1 .9, beta2 .95, eps 1e-9).

    p <- p * (1 - lr*wd);  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
    p <- p - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
the same arithmetic as torch.optim.AdamW. Groups carry `lr_mult` (muP) and `weight_decay`; the
scheduled base LR is passed to `step`. Gradients are read from `p.main_grad` (the fp32 gradient
buffer of `parallel.grad_buffers`) when present, else `p.grad`. When parameters are bf16 the optimizer keeps
an fp32 master copy and writes the rounded result back; fp32 and fp64 parameters are their own masters
(state and gradients in the parameters' dtype: fp64 runs keep everything in fp64, see `ops.precision`).
The distributed optimizer (`parallel.distributed_optimizer`) runs the same `adamw_` on its shards.
"""

from __future__ import annotations

import math

import torch

from ..ops.precision import wide_dtype


@torch.no_grad()
def adamw_(
    params: list,
    grads: list,
    exp_avgs: list,
    exp_avg_sqs: list,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """One in-place AdamW update of fp32 (or fp64) tensors (lists of equal length; views are fine)."""
    if not params:
        return
    if weight_decay:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, math.sqrt(bc2))
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, -lr / bc1)


def grad_of(p: torch.Tensor) -> torch.Tensor:
    g = getattr(p, "main_grad", None)
    if g is None:
        g = p.grad
    if g is None:
        return torch.zeros_like(p, dtype=wide_dtype(p.dtype))
    return g.to(wide_dtype(p.dtype))


class AdamWSteps:
    """What both optimizers share: the hyper-parameters, the step count, and the update of one group
    (`groups` entries carry lr_mult, weight_decay, exp_avg, exp_avg_sq)."""

    beta1: float
    beta2: float
    eps: float
    step_count: int

    def _update(self, g: dict, masters: list, grads: list, lr: float) -> None:
        adamw_(
            masters,
            grads,
            g["exp_avg"],
            g["exp_avg_sq"],
            step=self.step_count,
            lr=lr * g["lr_mult"],
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
            weight_decay=g["weight_decay"],
        )


class AdamW(AdamWSteps):
    """The plain (replicated) optimizer: every rank updates all of its parameters."""

    def __init__(
        self, groups: list[dict], beta1: float = 0.9, beta2: float = 0.95, eps: float = 1e-9, names: dict | None = None
    ):
        """`groups`: [{params, lr_mult, weight_decay, name}] (e.g. `mup.param_groups`);
        `names`: id(param) -> name, for a name-keyed state dict."""
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.step_count = 0
        self.groups = []
        for g in groups:
            params = list(g["params"])
            masters = [p if p.dtype == wide_dtype(p.dtype) else p.detach().float().clone() for p in params]
            self.groups.append(
                dict(
                    name=g.get("name", ""),
                    lr_mult=float(g.get("lr_mult", 1.0)),
                    weight_decay=float(g.get("weight_decay", 0.0)),
                    params=params,
                    masters=masters,
                    exp_avg=[torch.zeros_like(m) for m in masters],
                    exp_avg_sq=[torch.zeros_like(m) for m in masters],
                )
            )
        self.names = names or {}

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.step_count += 1
        for g in self.groups:
            self._update(g, g["masters"], [grad_of(p) for p in g["params"]], lr)
            copies = [(p, m) for p, m in zip(g["params"], g["masters"], strict=True) if p is not m]
            if copies:
                torch._foreach_copy_([p for p, _ in copies], [m for _, m in copies])

    @torch.no_grad()
    def reload_masters(self) -> None:
        """After parameters were overwritten (loading weights): masters <- parameters."""
        for g in self.groups:
            for p, m in zip(g["params"], g["masters"], strict=True):
                if p is not m:
                    m.copy_(p)

    def _key(self, p, gi: int, i: int) -> str:
        return self.names.get(id(p), f"{gi}.{i}")

    def state_dict(self) -> dict:
        state = {}
        for gi, g in enumerate(self.groups):
            for i, (p, m) in enumerate(zip(g["params"], g["masters"], strict=True)):
                s = dict(exp_avg=g["exp_avg"][i], exp_avg_sq=g["exp_avg_sq"][i])
                if p is not m:
                    s["master"] = m
                state[self._key(p, gi, i)] = s
        return dict(kind="adamw", step=self.step_count, state=state)

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        if sd.get("kind") != "adamw":
            raise ValueError(f"optimizer state: expected kind 'adamw', got {sd.get('kind')!r}")
        state = sd["state"]
        for gi, g in enumerate(self.groups):
            for i, (p, m) in enumerate(zip(g["params"], g["masters"], strict=True)):
                key = self._key(p, gi, i)
                if key not in state:
                    raise ValueError(f"optimizer state: no entry for parameter {key!r}")
                s = state[key]
                for k, dst in (("exp_avg", g["exp_avg"][i]), ("exp_avg_sq", g["exp_avg_sq"][i])):
                    if tuple(s[k].shape) != tuple(dst.shape):
                        raise ValueError(
                            f"optimizer state: {key}.{k} has shape {tuple(s[k].shape)}, expected {tuple(dst.shape)}"
                        )
                    dst.copy_(s[k])
                if p is not m:
                    m.copy_(s.get("master", p))
        self.step_count = int(sd["step"])
