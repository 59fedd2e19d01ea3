"""`megacrystal plan --config C.yaml --gpus N --gpu {h100,h200}`: per-GPU memory and step-time
estimates for every valid (tp, pp, dp) layout of a config, best first, at the config's cp.

Memory per GPU (bytes), Megatron's accounting:
  weights 2·P/(tp·pp) (bf16) + grads 4·P/(tp·pp) (fp32 main grads)
  + optimizer 12·P/(tp·pp) (fp32 master + Adam m, v), divided by dp with the distributed optimizer
  + activations per layer ≈ s·b·h·34 / tp (flash attention; /tp needs sequence parallelism, else the
    norm/dropout part, 10·s·b·h, is not divided), times layers per stage, times pp in flight for 1F1B's
    first stage; + logits s·b·V·(2+4)/tp; activations and logits divided by cp (each cp rank holds
    s/cp tokens; no parameter is split by cp, the optimizer shards over dp·cp).
Time: FLOPs/token · tokens / (gpus · peak · assumed MFU), plus the pipeline bubble (p−1)/(v·m+p−1).
These are estimates to choose a layout, not measurements.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

from .config import ConfigError, load_config, validate_config, validate_world
from .model.recompute import activation_elements
from .model.transformer import count_parameters
from .train.metrics import flops_per_token

GPUS = {"h100": dict(mem=80e9, peak=989e12), "h200": dict(mem=141e9, peak=989e12)}


def recompute_factor(m) -> float:
    """Share of the per-layer activations kept under `model.recompute` (full: the block inputs plus
    slack; selective: model/recompute.py's accounting, selective over none)."""
    if m.recompute == "full":
        return 0.1
    if m.recompute == "selective":
        return activation_elements(m, "selective") / activation_elements(m, "none")
    return 1.0


def estimate(cfg, tp: int, pp: int, dp: int, vpp: int, gpu: str, mfu: float = 0.45) -> dict:
    m = cfg.model
    P = count_parameters(m)
    cp = cfg.parallel.cp
    mp = tp * pp
    s, b, h, L = cfg.data.seq_length, cfg.train.micro_batch_size, m.hidden_size, m.num_layers
    weights = 2 * P / mp
    grads = 4 * P / mp
    optim = 12 * P / mp / (dp * cp if cfg.parallel.distributed_optimizer else 1)
    sp = cfg.parallel.sequence_parallel and tp > 1
    per_layer = s * b * h * (34 / tp if sp else (24 / tp + 10))
    in_flight = pp if pp > 1 else 1
    acts = per_layer * (L / pp) * in_flight * recompute_factor(m) / cp
    logits = s * b * m.vocab_size * 6 / tp / cp
    total = weights + grads + optim + acts + logits
    n_micro = cfg.train.global_batch_size // (b * dp)
    bubble = (pp - 1) / (vpp * n_micro + pp - 1) if pp > 1 else 0.0
    tokens = cfg.train.global_batch_size * s
    ideal = flops_per_token(m, s) * tokens / (mp * cp * dp * GPUS[gpu]["peak"] * mfu)
    step = ideal / (1 - bubble)
    return dict(
        tp=tp,
        cp=cp,
        pp=pp,
        dp=dp,
        vpp=vpp,
        memory_gb=round(total / 1e9, 1),
        fits=total < 0.92 * GPUS[gpu]["mem"],
        bubble=round(bubble, 3),
        step_s=round(step, 2),
        tokens_per_s=round(tokens / step),
        parts_gb=dict(
            weights=round(weights / 1e9, 1),
            grads=round(grads / 1e9, 1),
            optimizer=round(optim / 1e9, 1),
            activations=round(acts / 1e9, 1),
            logits=round(logits / 1e9, 1),
        ),
    )


def plan(cfg, gpus: int, gpu: str) -> list[dict]:
    rows = []
    for tp in (1, 2, 4, 8):
        for pp in (1, 2, 4, 8, 16):
            if gpus % (tp * pp * cfg.parallel.cp):
                continue
            for vpp in (1, 2) if pp > 1 else (1,):
                trial = copy.deepcopy(cfg)
                trial.parallel.tp, trial.parallel.pp, trial.parallel.vpp, trial.parallel.dp = tp, pp, vpp, None
                try:
                    validate_config(trial)
                    dp = validate_world(trial, gpus)
                except ConfigError:
                    continue
                rows.append(estimate(trial, tp, pp, dp, vpp, gpu))
    rows.sort(key=lambda r: (not r["fits"], r["step_s"], r["tp"] * r["pp"], r["vpp"]))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a run config (YAML)")
    ap.add_argument("--gpus", type=int, required=True, help="number of GPUs")
    ap.add_argument("--gpu", choices=sorted(GPUS), default="h100", help="GPU type (default h100)")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the config")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides, validate=False)
        rows = plan(cfg, a.gpus, a.gpu)
    except ConfigError as e:
        print(f"megacrystal plan: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"megacrystal plan: no valid layout of {a.config} on {a.gpus} GPUs", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(
        f"{count_parameters(cfg.model) / 1e9:.2f} B parameters, seq {cfg.data.seq_length}, global batch "
        f"{cfg.train.global_batch_size}, cp {cfg.parallel.cp}, {a.gpus}x {a.gpu} (estimates; assumed MFU 45%)"
    )
    print(
        f"{'tp':>3} {'pp':>3} {'vpp':>3} {'dp':>5} {'GB/GPU':>7} {'fits':>5} {'bubble':>7} {'step s':>8} {'tok/s':>11}"
    )
    for r in rows[:15]:
        print(
            f"{r['tp']:>3} {r['pp']:>3} {r['vpp']:>3} {r['dp']:>5} {r['memory_gb']:>7} {r['fits']!s:>5} "
            f"{r['bubble']:>7} {r['step_s']:>8} {r['tokens_per_s']:>11}"
        )
    return 0
