"""The engine's check of one rank's micro-batches, before any collective: keys, shapes, id ranges.

A bad batch is found on the rank that holds it; `Engine._prepare` then agrees on the verdict with every
rank (in the step's first all-reduce), so one rank's bad batch fails all ranks instead of hanging them.
The batches are the loader's host tensors: reading them here costs no device synchronisation.
"""

from __future__ import annotations

import torch

PER_TOKEN = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids")


def batch_problem(micro_batches, cfg, grid, sp: bool) -> str | None:
    """The first problem with this rank's micro-batches, or None."""
    if not isinstance(micro_batches, (list, tuple)) or not micro_batches:
        return "micro_batches: expected a non-empty list of dicts"
    m, g = cfg.model, grid
    shape = None
    for i, b in enumerate(micro_batches):
        where = f"micro_batches[{i}]"
        if not isinstance(b, dict):
            return f"{where}: expected a dict, got {type(b).__name__}"
        for k in ("tokens", "labels", "loss_mask"):
            if k not in b:
                return f"{where}: missing {k!r} (needs tokens, labels, loss_mask)"
        for k, v in b.items():
            if k not in PER_TOKEN:
                continue
            if v is None and k in ("position_ids", "segment_ids"):
                continue
            if not isinstance(v, torch.Tensor) or v.ndim != 2:
                return f"{where}.{k}: expected a 2-D tensor [batch, seq]"
            if shape is None:
                shape = tuple(v.shape)
            if tuple(v.shape) != shape:
                return f"{where}.{k}: shape {tuple(v.shape)}, expected {shape} like the others"
        if b["tokens"].dtype.is_floating_point or b["labels"].dtype.is_floating_point:
            return f"{where}: tokens and labels must be integer tensors"
        tmin, tmax = int(b["tokens"].min()), int(b["tokens"].max())
        if tmin < 0 or tmax >= m.vocab_size:
            return f"{where}.tokens: ids in [{tmin}, {tmax}], expected [0, {m.vocab_size})"
        lab = b["labels"]
        if int(lab.max()) >= m.vocab_size or bool(((lab < 0) & (lab != -100)).any()):
            bad = int(lab[(lab >= m.vocab_size) | ((lab < 0) & (lab != -100))][0])
            return f"{where}.labels: id {bad}, expected [0, {m.vocab_size}) or -100 (ignored)"
    local = shape[1]  # this rank's tokens per sequence
    if g.cp_size > 1:
        problem = _cp_problem(micro_batches, cfg, g, local)
        if problem:
            return problem
    s = local * g.cp_size
    if s > m.max_seq_len:
        return f"micro_batches: sequence length {s} exceeds model.max_seq_len={m.max_seq_len}"
    if sp and local % g.tp_size:
        return f"micro_batches: {local} tokens per sequence on this rank, not divisible by tp={g.tp_size} (sequence parallel)"
    if g.vpp_size > 1 and len(micro_batches) % g.pp_size:
        return (
            f"micro_batches: interleaved 1F1B needs the number of micro-batches "
            f"({len(micro_batches)}) divisible by pp={g.pp_size}"
        )
    return None


def _cp_problem(micro_batches, cfg, g, local: int) -> str | None:
    """Context parallel: every micro-batch is this cp rank's part (two chunks) of its sequences."""
    for i, b in enumerate(micro_batches):
        if b.get("cp_split") != (g.cp_rank, g.cp_size):
            return (
                f"micro_batches[{i}]: parallel.cp={g.cp_size} needs each micro-batch cut for this cp rank "
                f"({g.cp_rank}) by megacrystal.data.context_parallel.split_micro_batch; got "
                f"cp_split={b.get('cp_split')}"
            )
        if cfg.model.document_mask and b.get("segment_ids") is not None and b.get("cp_doc_start") is None:
            return f"micro_batches[{i}]: document masking under context parallelism needs cp_doc_start"
    if local % 2:
        return f"micro_batches: {local} tokens per sequence on this cp rank, expected two equal chunks"
    return None
