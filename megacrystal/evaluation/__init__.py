"""Evaluation of trained models: `megacrystal eval` (per-source loss, FIM and completion scores) and
`megacrystal compare` (runs and evaluations side by side)."""
