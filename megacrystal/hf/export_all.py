"""`megacrystal export-hf --checkpoint RUN --all --output DIR`: one HF folder per kept checkpoint.

    DIR/step_00001000/   config.json (+ "megacrystal": {step, tokens, phase, checkpoint}), weights, tokenizer
    DIR/step_00002000/   ...

the way intermediate checkpoints are published (Crystal released 136 of them). Every committed
checkpoint of the run (what `train.keep_checkpoints` / `train.keep_every` kept) is exported, oldest
first. A folder that exists is skipped and never overwritten, so a second call exports only new
checkpoints; each folder is written as DIR/step_N.tmp/ and renamed when complete (a `.tmp` left by an
interrupted export is this command's own partial output and is replaced).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def export_all(run, fmt: str, output, dtype=None, max_shard_bytes: int = 5 * 2**30, log=print) -> list[Path]:
    """Export every kept checkpoint of `run` into `output`/step_N/; -> the folders written now."""
    from ..atomic_io import fsync_dir
    from ..checkpoint.files import kept_checkpoints
    from .convert import export_hf

    kept = kept_checkpoints(run)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for _, ckpt in kept:
        dst = out / ckpt.name
        if dst.exists():
            log(f"{dst}: exists; skipped (an export is never overwritten)")
            continue
        tmp = out / f"{ckpt.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        export_hf(str(ckpt), fmt, tmp, dtype, max_shard_bytes)
        os.rename(tmp, dst)
        fsync_dir(out)
        written.append(dst)
        log(f"wrote {dst}")
    return written
