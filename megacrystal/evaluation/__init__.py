"""Evaluation of trained models: the in-house metrics and lm-evaluation-harness (`harness.py`)."""
