"""Evaluation of trained models: `megacrystal eval` (per-source loss, FIM and completion scores; with
`--harness`, lm-evaluation-harness through `harness.py`) and `megacrystal compare` (runs and evaluations
side by side)."""
