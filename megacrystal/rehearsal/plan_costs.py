"""The planner's cost source backed by `megacrystal rehearse` (`megacrystal plan`'s default): the real
code played on meta, once per distinct layer shape. It lives with the rehearsal, which sits above the
planner (the planner's simulator imports nothing of the training code, so training can ask it for an
estimate: train/long_run.py).

For a `LayerShape` (tp, cp, sequence parallelism, recompute, micro-batch size, sequence length) the
user's configuration is cut to a minimal launch: two micro-batches (the second runs beside what the
first leaves, as under gradient accumulation), pp 1, dp 1, world tp x cp, and 1 and 2 layers. The two rehearsals differ by exactly one layer, so from their records:
- a layer's parameters, the activations it keeps per micro-batch (the peak of tensors autograd saved),
  the ops the host dispatches for it (every aten op, views included: a CPU's host cost is per op),
  its matmul and attention FLOPs (fwd, bwd and recompute, as executed), and its collective bytes per
  group and kind (calls whose count grows with the layers; the cp ring's p2p bytes), by difference;
- the embedding and the head with its loss: the 1-layer run less one layer, split between the two as
  the formula splits them (the rehearsal does not tell them apart);
- the transient memory at the peak of the schedule (temporaries and communication buffers alive beside
  the state and the activations: the head's logits and loss at the 1- and 2-layer runs' peak, so an
  upper bound for a stage without the head), and the transient of the rest of the step (reduction,
  norm, optimizer) per parameter of the 2-layer run, where the step peaks there.
The formula record of the same shape keeps the GEMM shapes the timing model needs; its FLOPs and
collective bytes are scaled per class to the measured ones (the ratios are kept in
`LayerCost.measured`), its parameters, activations and temporaries replaced. A shape the rehearsal
refuses or crashes on keeps the formula record, marked as such.

Results are cached in memory and on disk (`$XDG_CACHE_HOME/megacrystal/plan-rehearsal`, else
`~/.cache/...`), one JSON file per shape, keyed by the minimal configuration and a hash of the
package's source (a code change re-measures).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

from ..atomic_io import atomic_write
from ..code_version import code_version
from ..planner.costs import FORMULA, Coll, LayerCost
from ..planner.search import recompute_value
from ..planner.shapes import LayerShape

CLASS = {"gemm": "matmul", "attention": "attention"}
# Micro-batches of a minimal run: two, so the second runs beside what the first leaves until the step
# ends (a full layout with gradient accumulation has that; measured: the head's bf16 weight gradient).
MICRO = 2
KIND = {
    "all_gather_single": "all_gather",
    "all_gather_into_tensor": "all_gather",
    "reduce_scatter_single": "reduce_scatter",
    "reduce_scatter_tensor": "reduce_scatter",
    "all_reduce": "all_reduce",
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "megacrystal" / "plan-rehearsal"


def minimal_config(cfg, s: LayerShape, layers: int):
    """`cfg` cut to MICRO micro-batches of shape `s` on tp x cp ranks (pp 1, dp 1) with `layers` layers."""
    c = copy.copy(cfg)
    c.parallel = dataclasses.replace(
        cfg.parallel,
        tp=s.tp,
        cp=s.cp,
        pp=1,
        vpp=1,
        dp=None,
        sequence_parallel=s.sp,
        distributed_optimizer=False,
    )
    c.model = dataclasses.replace(
        cfg.model,
        num_layers=layers,
        recompute=recompute_value(s.recompute),
        max_seq_len=max(cfg.model.max_seq_len or s.seq, s.seq),
    )
    c.train = dataclasses.replace(
        cfg.train, micro_batch_size=s.mbs, global_batch_size=MICRO * s.mbs, eval_interval=0, save_interval=0
    )
    c.data = dataclasses.replace(cfg.data, seq_length=s.seq)
    return c


def _collective_bytes(one: dict, two: dict) -> dict:
    """Per-layer bytes per (group, kind): the calls whose count grows by a layer (a once-per-step call
    whose size grows, e.g. the sequence-parallel gradient sum, changes its key and is left out)."""

    def keyed(rank):
        return {(c["op"], c["group"], c["bytes"]): c["count"] for c in rank["steps"][0]["collectives"]}

    a, b = keyed(one), keyed(two)
    out: dict = {}
    for (op, group, nbytes), n2 in b.items():
        n1 = a.get((op, group, nbytes))
        if op in KIND and n1 is not None and n2 > n1:
            k = f"{group}.{KIND[op]}"
            out[k] = out.get(k, 0) + (n2 - n1) * nbytes
    cp = [r["steps"][0]["p2p"].get("by_group", {}).get("cp", {}).get("send_bytes", 0) for r in (one, two)]
    if cp[1] > cp[0]:
        out["cp.p2p"] = cp[1] - cp[0]
    return out


def measure(cfg, s: LayerShape, jobs: int = 2, workdir: str | None = None) -> dict:
    """The pieces of shape `s` from two rehearsals (1 and 2 layers), per micro-batch where per step;
    `error` set where they failed."""
    from .run import rehearse

    recs = []
    for layers in (1, 2):
        rec = rehearse(minimal_config(cfg, s, layers), s.tp * s.cp, "h200", [], steps=1, jobs=jobs, workdir=workdir)
        bad = [f for f in rec["findings"] if f["check"] in ("crash", "config")]
        if bad or not rec["ranks"]:
            return dict(error=bad[0]["call"] if bad else "no rank played")
        recs.append(rec)
    one, two = (max(r["ranks"], key=lambda x: x["memory"]["peak_bytes"]) for r in recs)
    f1, f2 = one["steps"][0]["flops"], two["steps"][0]["flops"]
    secs = two["memory"]["sections"]
    sched, step = secs.get("step 1 schedule", {}), secs.get("step 1", {})
    transient = sum(sched.get("breakdown", {}).get(k, 0) for k in ("temporaries", "communication"))
    update = 0.0  # the step's peak outside its schedule (reduction, norm, optimizer), beyond the state
    if step.get("peak_bytes", 0) > sched.get("peak_bytes", 0):
        b = step["breakdown"]
        update = (b["temporaries"] + b["communication"] + b["activations"]) / max(two["state"]["parameters"], 1)
    return dict(
        params_layer=two["state"]["parameters"] - one["state"]["parameters"],
        params_rest=2 * one["state"]["parameters"] - two["state"]["parameters"],
        acts_layer=two["memory"]["peak_activations"] - one["memory"]["peak_activations"],
        acts_rest=2 * one["memory"]["peak_activations"] - two["memory"]["peak_activations"],
        transient=transient,
        update_per_param=update,
        ops_layer=(two["steps"][0]["ops"] - one["steps"][0]["ops"]) / MICRO,
        ops_rest=(2 * one["steps"][0]["ops"] - two["steps"][0]["ops"]) / MICRO,
        flops_layer={k: (f2[k] - f1[k]) / MICRO for k in ("matmul", "attention")},
        flops_rest={k: (2 * f1[k] - f2[k]) / MICRO for k in ("matmul", "attention")},
        collectives_layer={k: v / MICRO for k, v in _collective_bytes(one, two).items()},
        seconds=round(sum(r["timing"]["seconds"] for r in recs), 2),
    )


def _scaled(rec: LayerCost, flops: dict, colls: dict) -> tuple[list, list, dict]:
    """The formula's ops and collectives scaled per class to the measured totals; the ratios."""
    ratios: dict = {}
    ops = list(rec.ops)
    for cls, name in CLASS.items():
        want, have = flops.get(name, 0.0), rec.flops(cls=cls)
        if have > 0 and want > 0:
            ratios[name] = want / have
            ops = [dataclasses.replace(o, flops=o.flops * ratios[name]) if o.cls == cls else o for o in ops]
    out = list(rec.colls)
    for key, want in colls.items():
        group, kind = key.split(".")
        have = sum(c.nbytes * c.count for c in out if c.group == group and c.kind == kind)
        if have > 0:
            ratios[key] = want / have
            out = [
                dataclasses.replace(c, nbytes=c.nbytes * ratios[key]) if (c.group, c.kind) == (group, kind) else c
                for c in out
            ]
        else:  # the code makes a collective the formula does not have: exposed, in the forward
            ratios[key] = float("inf")
            out.append(Coll(f"measured.{key}", kind, group, float(want), "fwd"))
    return ops, out, ratios


class RehearsalCosts:
    """`CostSource` for one configuration (its model, precision, backends, data); see the module doc."""

    flops_from = "rehearsal (matmul and attention FLOPs and collective bytes played on meta per layer shape; GEMM shapes from the model)"
    memory_from = (
        "rehearsal (parameters, activations and transients played on meta per layer shape, composed on the schedule)"
    )
    measured = True

    def __init__(self, cfg, jobs: int = 2, cache: Path | None = None, hardware: str | None = None):
        if hardware == "cpu":  # a CPU run dispatches the torch kernels: rehearse those (on meta the GPU's would run)
            cfg = copy.copy(cfg)
            cfg.model = dataclasses.replace(cfg.model, kernels="torch")
        self.cfg = cfg
        self.jobs = jobs
        self.cache = Path(cache) if cache else cache_dir()
        self.pieces: dict = {}
        self.rehearsed = 0  # shapes measured by this source (not found in a cache)

    def key(self, s: LayerShape) -> str:
        c = minimal_config(self.cfg, s, 1).to_dict()
        for k in ("out_dir", "seed"):
            c["train"].pop(k, None)
        blob = json.dumps(dict(config=c, code=code_version()), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _pieces(self, s: LayerShape) -> dict:
        k = self.key(s)
        got = self.pieces.get(k)
        if got is not None:
            return got
        path = self.cache / f"{k}.json"
        if path.is_file():
            try:
                got = json.loads(path.read_text())
            except ValueError:
                got = None
        if got is None:
            got = measure(self.cfg, s, self.jobs, str(self.cache / "work"))
            self.rehearsed += 1
            self.cache.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(got, indent=1))
        self.pieces[k] = got
        return got

    def _build(self, s: LayerShape, part: str) -> LayerCost:
        layer, emb, head = FORMULA.layer(s), FORMULA.embedding(s), FORMULA.head(s)
        base = dict(layer=layer, embedding=emb, head=head)[part]
        p = self._pieces(s)
        if "error" in p:
            return dataclasses.replace(base, source=f"formula (the rehearsal failed: {p['error']})")
        if part == "layer":
            params, acts, flops, colls = p["params_layer"], p["acts_layer"], p["flops_layer"], p["collectives_layer"]
            ops = p.get("ops_layer", 0.0)
        else:  # the rest, split as the formula splits it between the embedding and the head
            wp, wa = _share(emb.params, head.params), _share(emb.activations, head.activations)
            if part == "head":
                wp, wa = 1 - wp, 1 - wa
            params, acts = p["params_rest"] * wp, p["acts_rest"] * wa
            # the embedding does no matmul: the rest's FLOPs are the head's (and its loss)
            flops = {k: v * (1.0 if part == "head" else 0.0) for k, v in p["flops_rest"].items()}
            colls = {}
            wo = _share(len(emb.ops), len(head.ops))  # the rest's ops, split by the formula's op counts
            ops = p.get("ops_rest", 0.0) * (wo if part == "embedding" else 1 - wo)
        scaled, out, ratios = _scaled(base, flops, colls)
        return LayerCost(
            ops=scaled,
            colls=out,
            params=float(params),
            activations=float(max(acts, 0)),
            # the minimal runs peak at the head's loss: their transient is the head's; a stage without
            # the head keeps the formula's largest layer / embedding temporary
            temporaries=float(p["transient"]) if part == "head" else base.temporaries,
            host_ops=float(max(ops, 0.0)),
            source="rehearsal",
            measured=dict(ratios=ratios, seconds=p["seconds"], update_per_param=p["update_per_param"]),
        )

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one source per configuration; the cache is the point
    def layer(self, s: LayerShape) -> LayerCost:
        return self._build(s, "layer")

    @functools.lru_cache(maxsize=1024)  # noqa: B019
    def embedding(self, s: LayerShape) -> LayerCost:
        return self._build(s, "embedding")

    @functools.lru_cache(maxsize=1024)  # noqa: B019
    def head(self, s: LayerShape) -> LayerCost:
        return self._build(s, "head")


def _share(a: float, b: float) -> float:
    return a / (a + b) if a + b > 0 else 0.5
