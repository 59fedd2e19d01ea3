"""Modeling code that crystalcoder exports carry for `trust_remote_code` (see docs/model.md).

The two modules here import only torch and transformers (never megacrystal): `export-hf --format
crystalcoder` copies them next to config.json, whose `auto_map` names them, so the export loads with
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` on a machine without megacrystal.
"""

from __future__ import annotations

from pathlib import Path

from ...atomic_io import atomic_copy

HERE = Path(__file__).resolve().parent
REMOTE_CODE_FILES = ("configuration_crystalcoder.py", "modeling_crystalcoder.py")


def write_remote_code(out_dir) -> list[Path]:
    """Copy the modeling code into an HF directory (each file atomically); -> the written paths."""
    out = []
    for name in REMOTE_CODE_FILES:
        dst = Path(out_dir) / name
        atomic_copy(HERE / name, dst)
        out.append(dst)
    return out
