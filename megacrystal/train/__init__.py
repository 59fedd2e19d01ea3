"""Training: the loop over phases, LR schedule, checkpoints, metrics and plots."""
