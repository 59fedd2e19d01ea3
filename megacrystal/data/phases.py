"""The phase schedule over blends: global sample g -> (phase, source, file, sample) -> tokens.

    ds = PhasedDataset(plan, cache_dir, group=None, tokenizer=tok)
    ds[g]  -> dict of numpy arrays for global sample g (see `SampleBuilder`)

Phase p owns global samples [start_p, start_p + n_p). Within it, a greedy blend of the phase's
sources starts fresh at t = g - start_p and gives (source s, c): the c-th sample of s *in this
phase*. Each source has one sample stream over all phases (its files blended by file weight,
each file one GPT index); phase p reads it from the cursor where earlier phases stopped
(cursor_p[s] = samples of s in phases before p), so a source used again later continues its
epoch order instead of restarting it. A replay entry of phase p reads a range of phase q's samples
of s (q < p) instead: stream samples cursor_q[s] + [a, b), in order, wrapping around, with phase q's
FIM rates and draws (the draws hash phase q's index), so it repeats phase q's tokens exactly.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from ..log import get_logger
from . import index_cache
from .blended import build_blend
from .entries import EntryPlan, replay_range
from .fim import FIM, file_key
from .gpt_dataset import GPTIndex, SamplePart
from .indexed import IndexedDataset
from .plan import DataPlan

log = get_logger("megacrystal.data.phases")


def cached_blend(weights, size: int, cache_dir: str | None, group, what: str):
    """Blend arrays (cached) + final per-source counts."""
    desc = {"weights": [float(w) for w in weights], "size": int(size), "what": what}

    def build():
        src, idx = build_blend(weights, size)
        counts = np.bincount(src, minlength=len(weights)).astype(np.int64)
        return {"source": src, "sample": idx}, {"counts": counts.tolist()}

    arrays, meta = index_cache.cached("blend", desc, build, cache_dir, group)
    return arrays["source"], arrays["sample"], np.array(meta["counts"], dtype=np.int64)


class SourceStream:
    """One source's samples over all phases: sample k -> (file, GPT index sample)."""

    def __init__(
        self, plan, seq_length: int, seed: int, cache_dir, group, split: str = "train", num_samples: int | None = None
    ):
        self.name = plan.name
        self.kind = plan.kind
        self.indices: list[GPTIndex] = []
        self.keys: list[int] = []
        weights = []
        for i, f in enumerate(plan.files):
            docs = f.train_documents if split == "train" else f.valid_documents
            tokens = f.train_tokens if split == "train" else f.valid_tokens
            if split != "train" and tokens < seq_length + 1:
                continue
            n = f.demand if split == "train" else None
            self.indices.append(
                GPTIndex(
                    IndexedDataset(f.prefix),
                    docs,
                    seq_length,
                    n,
                    seed,
                    cache_dir,
                    group,
                    name=f"{plan.name}:{f.prefix}",
                )
            )
            self.keys.append(file_key(plan.name, i))
            weights.append(f.weight if split == "train" else tokens)
        if split == "train":
            self.size = plan.demand
        else:
            self.size = sum(len(ix) for ix in self.indices) if num_samples is None else num_samples
        self.file_src = self.file_idx = None
        if len(self.indices) > 1:
            self.file_src, self.file_idx, _ = cached_blend(
                weights, self.size, cache_dir, group, f"files of {plan.name} ({split})"
            )

    def __len__(self) -> int:
        return self.size

    def locate(self, k: int) -> tuple[int, int]:
        if self.file_src is None:
            return 0, k % len(self.indices[0])
        f = int(self.file_src[k])
        return f, int(self.file_idx[k]) % len(self.indices[f])

    def sample(self, k: int) -> tuple[np.ndarray, list[SamplePart], int]:
        f, j = self.locate(k)
        tokens, parts = self.indices[f].sample(j)
        return tokens, parts, f


@dataclass
class Located:
    phase: int
    source: str
    source_sample: int  # k in the source's stream
    phase_sample: int  # t within the phase
    entry: EntryPlan = None  # the blend entry that gave it (a source, or a replay)
    entry_sample: int = 0  # c: the entry's c-th sample in this phase


class PhasedDataset:
    """Map-style: len() global samples; [g] -> dict of numpy arrays (tokens, labels, ...)."""

    def __init__(
        self,
        plan: DataPlan,
        cache_dir: str | None,
        group=None,
        tokenizer=None,
        eod_mask_loss: bool = False,
        reset_position_ids: bool = False,
    ):
        self.plan = plan
        self.streams = {
            name: SourceStream(sp, plan.seq_length, plan.seed, cache_dir, group)
            for name, sp in plan.sources.items()
            if sp.demand > 0
        }
        self.phase_arrays = []
        self.cursors: list[dict[str, int]] = []  # per phase: samples of each source in earlier phases
        self.counts: list[dict[str, int]] = []  # per phase: samples of each entry in this phase
        self.replays: list[dict[str, tuple[int, int]]] = []  # per phase: replay entry -> stream range [a, b)
        used = {name: 0 for name in self.streams}
        for p in plan.phases:
            src, idx, counts = cached_blend(p.weights, p.num_samples, cache_dir, group, f"phase {p.name}")
            self.phase_arrays.append((src, idx))
            self.cursors.append(dict(used))
            self.counts.append({e.name: c for e, c in zip(p.entries, counts.tolist(), strict=True)})
            self.replays.append({e.name: self._replay_range(e) for e in p.entries if e.replay is not None})
            for e, c in zip(p.entries, counts.tolist(), strict=True):
                if e.replay is not None:
                    continue
                used[e.source] += c
                if used[e.source] > self.streams[e.source].size:  # the surplus sizing makes this impossible
                    raise RuntimeError(
                        f"source {e.source}: phases ask {used[e.source]} samples, {self.streams[e.source].size} built"
                    )
        self.starts = [p.start for p in plan.phases]
        self.source_ids = {name: sp.index for name, sp in plan.sources.items()}
        self.tokenizer = tokenizer
        self.fim = None
        if any(p.fim for p in plan.phases):
            if tokenizer is None:
                raise ValueError("FIM (fim_rate > 0 on a source) needs the tokenizer (data.tokenizer_model)")
            self.fim = FIM(tokenizer, plan.seed)
        self.eod = tokenizer.eod if tokenizer is not None else None
        self.pad = self.fim.pad_id if self.fim is not None else None
        self.eod_mask_loss = eod_mask_loss
        self.reset_position_ids = reset_position_ids

    def _replay_range(self, e: EntryPlan) -> tuple[int, int]:
        """The replayed range as positions in the source's stream."""
        r = e.replay
        n = self.counts[r.phase][e.source]
        a, b = replay_range(r.start, r.end, n)
        if b <= a:
            raise ValueError(
                f"phase entry {e.name}: the range {r.start}..{r.end} of {n} samples of {e.source} is empty"
            )
        base = self.cursors[r.phase][e.source]
        return base + a, base + b

    def __len__(self) -> int:
        return self.plan.total_samples

    def locate(self, g: int) -> Located:
        if not 0 <= g < len(self):
            raise IndexError(f"global sample {g} out of range ({len(self)} samples in all phases)")
        p = bisect.bisect_right(self.starts, g) - 1
        t = g - self.starts[p]
        src, idx = self.phase_arrays[p]
        return self.entry_sample(p, int(src[t]), int(idx[t]), t)

    def source_counts(self, lo: int, hi: int) -> np.ndarray:
        """Samples per source (source_id order) among global samples [lo, hi), from the blend
        indices alone (no sample is read): what a step's global batch holds, known on every rank."""
        out = np.zeros(len(self.source_ids), dtype=np.int64)
        hi = min(hi, len(self))
        while lo < hi:
            p = bisect.bisect_right(self.starts, lo) - 1
            end = min(hi, self.starts[p] + self.plan.phases[p].num_samples)
            entries = self.phase_arrays[p][0][lo - self.starts[p] : end - self.starts[p]]
            per_entry = np.bincount(np.asarray(entries, dtype=np.int64), minlength=len(self.plan.phases[p].entries))
            for e, n in zip(self.plan.phases[p].entries, per_entry.tolist(), strict=True):
                out[self.source_ids[e.source]] += n
            lo = end
        return out

    def entry_sample(self, p: int, i: int, c: int, t: int = -1) -> Located:
        """Where the c-th sample of entry i of phase p comes from."""
        e = self.plan.phases[p].entries[i]
        if e.replay is None:
            k = self.cursors[p][e.source] + c
        else:  # the range, read in the replayed phase's order, again from its start when exhausted
            a, b = self.replays[p][e.name]
            k = a + c % (b - a)
        return Located(p, e.source, k, t, e, c)

    def raw(self, g: int):
        """(tokens int64[S+1], parts, located, fim report or None) of global sample g."""
        return self.raw_at(self.locate(g))

    def raw_at(self, loc: Located):
        stream = self.streams[loc.source]
        tokens, parts, f = stream.sample(loc.source_sample)
        report = None
        e = loc.entry
        if self.fim is not None and e.fim:
            fim_phase = loc.phase if e.replay is None else e.replay.phase  # a replay draws as its phase did
            tokens, report = self.fim.apply(tokens, parts, e.fim_rate, e.fim_spm_rate, fim_phase, stream.keys[f])
        return tokens, parts, loc, report

    def __getitem__(self, g: int) -> dict:
        tokens, parts, loc, report = self.raw(int(g))
        lengths = [p.length for p in (parts if report is None else report)]
        out = make_sample(
            tokens,
            lengths,
            eod=self.eod,
            pad=self.pad,
            eod_mask_loss=self.eod_mask_loss,
            reset_position_ids=self.reset_position_ids,
        )
        out["source_id"] = np.int64(self.source_ids[loc.source])
        out["phase_id"] = np.int64(loc.phase)
        out["sample_id"] = np.int64(g)
        return out


def make_sample(
    text: np.ndarray,
    piece_lengths,
    eod: int | None,
    pad: int | None,
    eod_mask_loss: bool = False,
    reset_position_ids: bool = False,
) -> dict:
    """Training arrays from S+1 tokens: inputs, labels, loss mask, positions, document segments.

    A new document segment starts at each piece boundary (where the sample crosses into the next
    document); `segment_ids` number them within the sample. The loss is masked where the label is
    <fim_pad> or the input is <fim_pad>, and (eod_mask_loss) where the input is EOD.
    """
    tokens = text[:-1]
    labels = text[1:]
    s = len(tokens)
    loss_mask = np.ones(s, dtype=np.float32)
    if pad is not None:
        loss_mask[(labels == pad) | (tokens == pad)] = 0.0
    if eod_mask_loss and eod is not None:
        loss_mask[tokens == eod] = 0.0
    starts = np.cumsum([0] + list(piece_lengths[:-1]))
    starts = starts[starts < s]
    seg = np.zeros(s, dtype=np.int32)
    seg[starts[1:]] = 1
    seg = np.cumsum(seg, dtype=np.int32)
    if reset_position_ids:
        pos = np.arange(s, dtype=np.int64) - starts[seg]
    else:
        pos = np.arange(s, dtype=np.int64)
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": pos, "segment_ids": seg}
