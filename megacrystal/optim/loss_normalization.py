"""What a step's summed loss is divided by (`optim.loss_normalization`).

- `tokens` (default, Megatron's habit): the number of loss tokens of the global batch, sum(loss_mask).
  The loss is a true per-token mean, whatever share of the batch is masked.
- `fixed` (Crystal's released configs): global batch x sequence length, every position counted,
  masked ones included. Where nothing is masked the two are equal; where a share m of the positions
  is masked (FIM padding, EOD with data.eod_mask_loss) the fixed loss and its gradient are (1 - m)
  times the token mean's, so batches with more padding pull less. Reproducing Crystal exactly
  needs `fixed`; for new recipes `tokens` keeps the step size independent of how much is masked.
"""

from __future__ import annotations

MODES = ("tokens", "fixed")


def loss_denominator(mode: str, loss_tokens: float, micro_batches: list[dict], dp_size: int) -> float:
    """The divisor of the global batch's summed loss. `loss_tokens`: sum of the loss mask over the global
    batch; `micro_batches`: this dp rank's (every rank holds as many positions, global batch / dp)."""
    if mode == "tokens":
        return max(float(loss_tokens), 1.0)
    if mode == "fixed":
        return float(sum(b["loss_mask"].numel() for b in micro_batches) * dp_size)
    raise ValueError(f"optim.loss_normalization: expected one of {list(MODES)}, got {mode!r}")
