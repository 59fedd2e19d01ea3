"""Hugging Face in and out.

convert.py        `megacrystal export-hf` / `import-hf`: checkpoints <-> HF directories
layouts.py        the name and shape maps of each layout (crystalcoder, llama)
layout_*.py       one layout each, and what they share
remote/           the modeling code crystalcoder exports carry for `trust_remote_code`
"""
