"""The resumable, DP-sharded loader the trainer consumes.

    plan, loader, valid = build_data(cfg, dp_rank, dp_size, group=None)
    for step_batches in loader:             # one item per optimizer step
        for mb in step_batches:             # this rank's micro-batches, in order
            mb["tokens"], mb["labels"]      # int64 [micro_batch_size, seq_length]
            mb["loss_mask"]                 # float32 [b, s]: 0 on <fim_pad> (and on EOD inputs if eod_mask_loss)
            mb["position_ids"]              # int64 [b, s] (restart at each document when reset_position_ids)
            mb["segment_ids"]               # int32 [b, s]: document number within each sample
            mb["cu_seqlens"], mb["max_seqlen"]  # int32 [n_docs + 1] over the flattened batch (varlen attention)
            mb["source_id"], mb["phase_id"], mb["sample_id"]  # int64 [b]
            # with parallel.cp > 1: this cp rank's part of each sequence (data/context_parallel.py):
            # per-token arrays [b, s/cp], mb["cp_doc_start"], mb["cp_split"]; no cu_seqlens
        ckpt["data"] = loader.state_dict()  # {"step": next step, ...}; load_state_dict() resumes exactly

Global batch of step s: global samples [s*G, (s+1)*G). Micro-batch m of DP rank r holds
samples s*G + m*(b*dp) + r*b ... + b - 1 (megatron-core's pretraining sampler layout), so the
union over ranks is the global batch whatever dp is. Samples are computed by a pure function of
the global sample id, so the batches are identical whatever the number of workers, and a
restored loader continues with exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from ..log import get_logger, say_once
from .batch import collate
from .context_parallel import CollateForRank, split_micro_batch
from .dali import dali_micro_batches
from .phases import PhasedDataset, SourceStream, make_sample
from .plan import DataPlan, make_plan

log = get_logger("megacrystal.data.loader")


class _Samples:
    """torch map-style dataset view: global id -> sample dict (numpy)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, g):
        return self.ds[g]


class _MicroBatchIds:
    """This rank's micro-batches from step `start` on, as lists of global sample ids, computed on demand."""

    def __init__(self, loader: StepLoader, start: int):
        self.loader, self.start = loader, start
        self.n = max(0, loader.total_steps - start) * loader.num_microbatches

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> list[int]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        step, m = divmod(i, self.loader.num_microbatches)
        return self.loader.micro_batch_ids(self.start + step, m)

    def __iter__(self):
        return (self[i] for i in range(self.n))


class StepLoader:
    """Iterates steps from `self.step`; each item: the list of this rank's micro-batches."""

    def __init__(
        self,
        dataset,
        dp_rank: int,
        dp_size: int,
        micro_batch_size: int,
        global_batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = True,
        total_steps: int | None = None,
        backend: str = "torch",
        prefetch_factor: int = 2,
        cp_rank: int = 0,
        cp_size: int = 1,
    ):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"loader: dp_rank {dp_rank} not in [0, {dp_size})")
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(
                f"train.global_batch_size: {global_batch_size} is not divisible by "
                f"micro_batch_size*dp = {micro_batch_size}*{dp_size}"
            )
        self.dataset = dataset
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.cp_rank, self.cp_size = cp_rank, cp_size  # every cp rank reads the same samples, keeps its part
        self.mbs, self.gbs = micro_batch_size, global_batch_size
        self.num_microbatches = global_batch_size // (micro_batch_size * dp_size)
        self.total_steps = len(dataset) // global_batch_size if total_steps is None else total_steps
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.backend = backend
        self.prefetch_factor = prefetch_factor
        self.step = 0

    # --- layout
    def micro_batch_ids(self, step: int, m: int) -> list[int]:
        base = step * self.gbs + m * self.mbs * self.dp_size + self.dp_rank * self.mbs
        return list(range(base, base + self.mbs))

    def source_counts(self, step: int):
        """Samples per source in the global batch of `step` (every dp rank's micro-batches), computed
        on the host from the data plan: no collective needed. None when the dataset cannot say."""
        counts = getattr(self.dataset, "source_counts", None)
        return None if counts is None else counts(step * self.gbs, (step + 1) * self.gbs)

    # --- resume
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "consumed_samples": self.step * self.gbs,
            "global_batch_size": self.gbs,
            "total_samples": len(self.dataset),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("global_batch_size", self.gbs) != self.gbs:
            raise ValueError(
                f"loader state: saved with global_batch_size {state['global_batch_size']}, this run uses {self.gbs}"
            )
        if "total_samples" in state and state["total_samples"] != len(self.dataset):
            raise ValueError(
                f"loader state: saved for {state['total_samples']} samples in all phases, this "
                f"configuration has {len(self.dataset)} (the phases changed)"
            )
        self.step = int(state["step"])

    def __len__(self) -> int:
        return max(0, self.total_steps - self.step)

    # --- iteration
    def _micro_batches(self, start: int) -> Iterator[dict]:
        batches = _MicroBatchIds(self, start)
        if self.backend == "dali":
            for mb in dali_micro_batches(self.dataset, batches, self.num_workers):
                yield split_micro_batch(mb, self.cp_rank, self.cp_size)
            return
        import torch

        pin = self.pin_memory and torch.cuda.is_available()
        if self.pin_memory and not pin:
            say_once("loader-no-pin", "data loader: no CUDA device, pinned memory off")
        if self.num_workers == 0:
            for ids in batches:
                mb = split_micro_batch(collate([self.dataset[g] for g in ids]), self.cp_rank, self.cp_size)
                yield {k: (v.pin_memory() if pin and torch.is_tensor(v) else v) for k, v in mb.items()} if pin else mb
            return
        # forked workers and the HF tokenizer's thread pool (FIM) do not mix; FIM encodes 3 pieces at a time
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        dl = torch.utils.data.DataLoader(
            _Samples(self.dataset),
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=collate if self.cp_size == 1 else CollateForRank(self.cp_rank, self.cp_size),
            pin_memory=pin,
            prefetch_factor=self.prefetch_factor,
        )
        yield from dl

    def __iter__(self) -> Iterator[list[dict]]:
        start = self.step
        it = self._micro_batches(start)
        for s in range(start, self.total_steps):
            mbs = [next(it) for _ in range(self.num_microbatches)]
            self.step = s + 1
            yield mbs


class ValidationSet:
    """Held-out samples of one source (its files' validation documents), the same ones every time."""

    def __init__(self, stream: SourceStream, source_id: int, eod: int | None):
        self.stream = stream
        self.source_id = source_id
        self.eod = eod

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, g: int) -> dict:
        tokens, parts, _ = self.stream.sample(int(g) % len(self.stream))
        out = make_sample(tokens, [p.length for p in parts], eod=self.eod, pad=None)
        out["source_id"] = np.int64(self.source_id)
        out["phase_id"] = np.int64(-1)
        out["sample_id"] = np.int64(g)
        return out

    def batches(
        self,
        steps: int,
        dp_rank: int,
        dp_size: int,
        micro_batch_size: int,
        global_batch_size: int,
        cp_rank: int = 0,
        cp_size: int = 1,
    ) -> StepLoader:
        """A loader over `steps` global batches of this source (wrapping around a small held-out set)."""
        return StepLoader(
            _Repeat(self, steps * global_batch_size),
            dp_rank,
            dp_size,
            micro_batch_size,
            global_batch_size,
            cp_rank=cp_rank,
            cp_size=cp_size,
        )


class _Repeat:
    """The first n samples of a ValidationSet (which wraps around)."""

    def __init__(self, vset: ValidationSet, n: int):
        self.vset, self.n = vset, n

    def __len__(self):
        return self.n

    def __getitem__(self, g):
        return self.vset[g]


def build_validation(plan: DataPlan, cache_dir: str | None, group=None, eod: int | None = None) -> dict:
    """{source: ValidationSet} of the sources some phase validates (`valid_sources`; default all)."""
    out = {}
    if plan.valid_fraction <= 0:
        return out
    wanted = [p.config.valid_sources for p in plan.phases if p.config is not None]
    everything = not wanted or any(w is None for w in wanted)  # some phase validates every source
    for name, sp in plan.sources.items():
        if sp.empty or not (everything or any(name in w for w in wanted)):
            continue
        stream = SourceStream(sp, plan.seq_length, plan.seed, cache_dir, group, split="valid")
        if not stream.indices or len(stream) == 0:
            log.info(f"validation: source {name} has no held-out sample of {plan.seq_length + 1} tokens; skipped")
            continue
        out[name] = ValidationSet(stream, sp.index, eod)
    return out


def build_data(
    cfg,
    dp_rank: int = 0,
    dp_size: int = 1,
    group=None,
    with_validation: bool = True,
    plan: DataPlan | None = None,
    cp_rank: int = 0,
):
    """(plan, train StepLoader, {source: ValidationSet}) for a validated config. The train loader gives
    cp rank `cp_rank` (of `parallel.cp`) its part of each sequence.

    Call `make_plan(cfg)` before creating process groups and pass it as `plan`: every data problem
    (missing file, empty source, too many epochs, FIM tokenizer) is raised there, on every rank alike.
    """
    from ..tokenizer import load_tokenizer

    d = cfg.data
    plan = plan if plan is not None else make_plan(cfg)
    tok = load_tokenizer(d.tokenizer_type, d.tokenizer_model) if d.tokenizer_model else None
    cache_dir = d.cache_dir or os.path.join(cfg.train.out_dir, "index_cache")
    ds = PhasedDataset(
        plan, cache_dir, group, tok, eod_mask_loss=d.eod_mask_loss, reset_position_ids=cfg.model.document_mask
    )
    loader = StepLoader(
        ds,
        dp_rank,
        dp_size,
        cfg.train.micro_batch_size,
        cfg.train.global_batch_size,
        num_workers=d.num_workers,
        pin_memory=d.pin_memory,
        backend=d.backend,
        cp_rank=cp_rank,
        cp_size=cfg.parallel.cp,
    )
    valid = build_validation(plan, cache_dir, group, tok.eod if tok else None) if with_validation else {}
    return plan, loader, valid
