"""A Hugging Face directory read as our serial model, by slices: `hf_source(dir)`.

Each of our tensors is made of runs of rows of HF tensors (`layout_common.Run`, planned per layout from
config.json and the tensors' shapes alone): a plain copy (LLaMA, embeddings, norms), a transpose
(CrystalCoder's Conv1D weights, stored [in, out]), or the fused QKV, whose rows ([q_j | k_j | v_j]
for each KV head j) come from q, k, v (LLaMA) or from column blocks of `c_attn` (CrystalCoder).
Reading a block of our tensor reads, for each run it meets, only the matching block of the HF tensor
(`FileSource`: safetensors slices), so a tensor-parallel rank reads its heads' rows of q, k and v
and its columns of a row-parallel weight, never the rest. Every layout maps this way: a slice of our
tensor is always a union of rectangles of HF tensors, at most three per KV head for the fused QKV.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.serialization import read_json_object, tokenizer_in
from ..model.weight_source import FileSource, WeightSource, files_of
from .layouts import LayoutError, crystalcoder_plan, llama_plan

PLANS = {"crystalcoder": crystalcoder_plan, "llama": llama_plan}


class HFSource(WeightSource):
    """Our serial tensors at their true shapes (HF files hold no padding), read through `plan`."""

    def __init__(self, store: WeightSource, plan: dict):
        self.store, self.plan = store, plan

    def shapes(self) -> dict[str, tuple]:
        return {n: tuple(true) for n, (true, _) in self.plan.items()}

    def read(self, name: str, start: tuple, size: tuple) -> torch.Tensor:
        true, runs = self.plan[name]
        lo, hi = start[0], start[0] + size[0]
        pieces = []
        for r in runs:
            a, b = max(lo, r.at), min(hi, r.at + r.n)
            if a >= b:
                continue
            s = r.src + a - r.at
            if len(true) == 1:
                pieces.append(self.store.read(r.key, (s,), (b - a,)))
            elif r.transposed:
                pieces.append(self.store.read(r.key, (start[1], s), (size[1], b - a)).t())
            else:
                pieces.append(self.store.read(r.key, (s, start[1]), (b - a, size[1])))
        if not pieces:
            return torch.empty(size)
        return torch.cat(pieces).contiguous() if len(pieces) > 1 else pieces[0].contiguous()


def hf_source(hf_dir, error=ValueError):
    """-> (our ModelConfig, HFSource, tokenizer file or None); reads config.json and the tensors'
    metadata only. `error` is raised (naming the file) for a bad directory or layout."""
    d = Path(hf_dir)
    conf = read_json_object(d / "config.json", error, "expected a Hugging Face model directory")
    files = files_of(d, "model.safetensors.index.json", "model.safetensors", error) or files_of(
        d, "pytorch_model.bin.index.json", "pytorch_model.bin", error
    )
    if not files:
        raise error(f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    store = FileSource(files, error)
    where = str(d / "config.json")
    kind = conf.get("model_type")
    if kind not in PLANS:
        raise error(f"{where}: model_type {kind!r}; supported: {sorted(PLANS)}")
    try:
        cfg, plan = PLANS[kind](conf, store.shapes(), where)
    except LayoutError as e:
        raise error(str(e)) from None
    return cfg, HFSource(store, plan), tokenizer_in(d)
