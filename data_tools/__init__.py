"""Corpus readers, tokenizer training and the preprocessing pipeline (no torch import)."""
