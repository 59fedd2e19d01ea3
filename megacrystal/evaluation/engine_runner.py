"""The model under evaluation: the training engine (same layers, kernels and tp x pp x dp grid),
loaded with consolidated weights, asked only for forward passes.

    runner = EvalRunner(model_cfg, state_dict, tp=1, pp=1, micro_batch_size=8, precision="fp32", device="auto")
    loss_sum, tokens = runner.loss(samples)        # token-summed masked loss over the global batch
    ids = runner.next_tokens(batch)                # greedy next tokens (tp gathers the vocabulary shards),
                                                   # through a KV cache when each sequence grew by one token
    results = runner.map(tasks, fn, batch_size)    # batches split over data-parallel replicas, gathered

Launched by torchrun it uses the world torchrun gives (dp = world / (tp x cp x pp)); otherwise it is a
world of one. The loss is the engine's `eval_loss`, i.e. exactly the training loss (under context
parallelism each cp rank scores its part of every sequence); generation needs pp = cp = 1 (each
replica decodes its share of the documents; tensor-parallel ranks decode together).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..config import Config, DataConfig, ModelConfig, ParallelConfig, TrainConfig


class EvalRunner:
    def __init__(
        self,
        model_cfg: ModelConfig,
        state_dict: dict,
        tp: int = 1,
        pp: int = 1,
        micro_batch_size: int = 8,
        precision: str = "fp32",
        device: str = "auto",
        seq_length: int | None = None,
        cp: int = 1,
    ):
        from ..engine.engine import Engine
        from ..parallel.init import init_distributed

        world = int(dist.get_world_size()) if dist.is_initialized() else _env_world()
        dp = max(1, world // (tp * cp * pp))
        seq = seq_length or model_cfg.max_seq_len
        if cp > 1 and seq % (2 * cp):
            raise ValueError(f"--cp {cp}: sequence length {seq} is not divisible by 2*cp = {2 * cp}")
        cfg = Config(
            model=model_cfg,
            parallel=ParallelConfig(tp=tp, pp=pp, cp=cp, overlap_grad_reduce=False),
            data=DataConfig(seq_length=seq_length or model_cfg.max_seq_len),
            train=TrainConfig(
                micro_batch_size=micro_batch_size,
                global_batch_size=micro_batch_size * dp * pp,
                precision=precision,
                device=device,
            ),
        )
        self.grid, self.device = init_distributed(cfg)
        self.engine = Engine(cfg, self.device, self.grid, for_training=False, init_weights=False)  # loaded next
        self.engine.load_full_model_state(state_dict)
        self.cfg = cfg
        self.micro_batch_size = micro_batch_size
        self.vocab_size = cfg.model.vocab_size
        self.max_seq_len = cfg.model.max_seq_len
        self._incremental = None

    @property
    def is_main(self) -> bool:
        return self.grid.rank == 0

    # ------------------------------------------------------------------ loss

    @property
    def global_batch(self) -> int:
        """Samples per `loss` call: micro_batch_size x dp x (pp micro-batches to fill the pipeline)."""
        g = self.grid
        return self.micro_batch_size * g.dp_size * g.pp_size

    def loss(self, samples: list[dict]) -> tuple[float, float]:
        """(sum of masked token losses, number of loss tokens) of up to `global_batch` samples (numpy
        dicts as the data layer makes them; every rank passes the same list). A short list is padded
        with copies whose loss mask is zero, so the result is exact."""
        from ..data.context_parallel import split_micro_batch
        from ..data.loader import collate

        g, b = self.grid, self.micro_batch_size
        n = self.global_batch
        if not 0 < len(samples) <= n:
            raise ValueError(f"EvalRunner.loss: expected 1..{n} samples, got {len(samples)}")
        padded = list(samples)
        while len(padded) < n:
            blank = dict(samples[0])
            blank["loss_mask"] = blank["loss_mask"] * 0
            padded.append(blank)
        mbs = []
        for m in range(g.pp_size):
            base = m * b * g.dp_size + g.dp_rank * b
            mbs.append(split_micro_batch(collate(padded[base : base + b]), g.cp_rank, g.cp_size))
        return self.engine.eval_loss(mbs)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def logits(self, ids: list[int]) -> torch.Tensor:
        """Next-token logits [vocab] after `ids`, whole on every tp rank."""
        return self.last_logits([ids])[0]

    @torch.no_grad()
    def last_logits(self, batch: list[list[int]]) -> torch.Tensor:
        """Next-token logits [len(batch), vocab] after each sequence (each at most max_seq_len long):
        one forward over the batch right-padded to its longest sequence (causal attention: a position
        never sees the padding after it)."""
        if self.grid.pp_size > 1 or self.grid.cp_size > 1:
            raise ValueError("generation needs parallel pp=1 and cp=1 (use tp and data-parallel ranks)")
        lengths = [len(x) for x in batch]
        if min(lengths) < 1 or max(lengths) > self.max_seq_len:
            raise ValueError(
                f"generation: sequence lengths {min(lengths)}..{max(lengths)}, expected 1..{self.max_seq_len}"
            )
        width = max(lengths)
        x = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ids in enumerate(batch):
            x[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        model = self.engine.chunks[0]
        model.eval()
        out = model(tokens=x.to(self.device))
        last = out[torch.arange(len(batch), device=out.device), torch.as_tensor(lengths, device=out.device) - 1]
        if self.grid.tp_size > 1:
            from ..parallel.tensor import gather_vocab

            last = gather_vocab(last, self.grid.tp, self.vocab_size)
        return last[:, : self.vocab_size].float()

    def cached_logits(self, batch: list[list[int]]) -> torch.Tensor:
        """`last_logits` through a KV cache (model/incremental.py): a batch whose sequences each extend
        one of the previous call's by one token runs only the new tokens."""
        if self.grid.pp_size > 1:
            raise ValueError("generation needs parallel pp=1 (use tp and data-parallel ranks)")
        if self._incremental is None:
            from ..model.incremental import IncrementalLogits

            finish = None
            if self.grid.tp_size > 1:
                from ..parallel.tensor import gather_vocab

                finish = lambda x: gather_vocab(x, self.grid.tp, self.vocab_size)
            self._incremental = IncrementalLogits(self.engine.chunks[0], finish)
        return self._incremental(batch)

    def next_tokens(self, batch: list[list[int]], cache: bool = True) -> list[int]:
        """The greedy (argmax: the lowest id among equal maxima) next token after each sequence;
        `cache=False` runs every sequence whole (the reference the cache is tested against)."""
        logits = self.cached_logits(batch) if cache else self.last_logits(batch)
        return logits.argmax(dim=-1).tolist()

    def map(self, items: list, fn, batch_size: int = 16, progress=None) -> list:
        """fn over `items` in batches (fn: list -> list of results), each data-parallel replica taking
        every dp-th item; the results are gathered on every rank, in order. `progress(n)` is called as
        items finish (rank 0 only)."""
        g = self.grid
        mine = list(range(g.dp_rank, len(items), g.dp_size))
        local = {}
        for k in range(0, len(mine), batch_size):
            idx = mine[k : k + batch_size]
            for i, r in zip(idx, fn([items[i] for i in idx]), strict=True):
                local[i] = r
            if progress is not None and self.is_main:
                progress(len(idx) * g.dp_size)
        if g.world_size == 1:
            return [local[i] for i in range(len(items))]
        everyone = [None] * g.world_size
        dist.all_gather_object(everyone, local)
        merged = {}
        for part in everyone:
            merged.update(part)
        return [merged[i] for i in range(len(items))]


def _env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1
