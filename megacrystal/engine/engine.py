"""The training engine: one model, wrapped in whatever tp x pp x dp grid the config asks for.

    engine = Engine(cfg, device)                      # after init_distributed (or a plain process)
    out = engine.train_step(micro_batches, lr)        # {loss, grad_norm, tokens, skipped}
    loss_sum, tokens = engine.eval_loss(micro_batches)
    engine.state_dict() / load_state_dict(sd)         # this rank's model + optimizer shard
    engine.full_model_state() / load_full_model_state(sd)   # serial-named, consolidated on rank 0

`micro_batches` are this dp rank's micro-batches of one optimizer step (every tp/pp rank of the
replica gets the same list): dicts of CPU tensors tokens, labels, loss_mask [b, s] and optionally
position_ids, segment_ids. The loss is sum(loss * mask) / sum(mask) over the global batch, and its
gradient is exactly that of the serial model on the whole batch: every micro-batch's loss is
divided by the global token count before backward, and dp gradients are summed.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist

from ..compiled.select import resolve_grad_accum_fusion, resolve_optim_impl
from ..config import Config, ResolvedModelConfig
from ..model import wgrad_fusion
from ..model.layers import SerialLayers
from ..model.mup import init_parameters, param_groups
from ..model.padding import fit_problem, full_shape, refit, true_part, true_shape
from ..model.param_spec import param_spec
from ..model.transformer import count_parameters, serial_layout
from ..optim.factory import clip_and_step, make_optimizer
from ..optim.loss_normalization import loss_denominator
from ..parallel import collectives as C
from ..parallel import pipeline_schedules as schedules
from ..parallel.grad_buffers import GradBuffers
from ..parallel.p2p import P2P
from ..parallel.pipeline import build_chunks, tied_embedding_params
from ..parallel.state import Grid, build_grid
from ..parallel.step import StepCompute
from ..parallel.tensor import TensorParallelLayers
from .tensors import default_dtype, to_cpu, to_device

FORMAT = "megacrystal-engine/1"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


class Engine:
    def __init__(
        self,
        cfg: Config,
        device: torch.device | None = None,
        grid: Grid | None = None,
        for_training: bool = True,
        init_weights: bool = True,
    ):
        """`for_training=False`: forward passes only (eval_loss, evaluation), no gradient buffers or
        optimizer state allocated. `init_weights=False`: the parameters are left uninitialised, for a
        caller that sets every one of them next (`load_full_model_state` checks that it does). `cfg` is read, never changed (an unresolved model config is resolved
        into a copy)."""
        if not isinstance(cfg.model, ResolvedModelConfig):
            cfg = dataclasses.replace(cfg, model=cfg.model.resolve())
        self.cfg = cfg
        self.device = torch.device(device if device is not None else "cpu")
        self.grid = grid or build_grid(cfg)  # checks the grid rules against the world
        par, g = cfg.parallel, self.grid
        self.dtype = DTYPES[cfg.train.precision]
        self.sp = bool(par.sequence_parallel) and g.tp_size > 1
        self.layers = SerialLayers() if g.tp_size == 1 else TensorParallelLayers(g, self.sp)
        # parameters are allocated in their final dtype on the device (no fp32 or host copy of the
        # model on the way); their values are drawn on the CPU in fp32, per name, then copied in
        with torch.device(self.device), default_dtype(self.dtype):
            self.chunks = build_chunks(cfg.model, self.layers, g)
        if init_weights:
            for m in self.chunks:
                init_parameters(m, cfg.model, cfg.train.seed)
        if self.sp:  # everything replicated over tp sees a slice of the sequence: partial grads
            for m in self.chunks:
                for p in m.parameters():
                    if not param_spec(p).sharded:
                        param_spec(p).sequence_parallel = True
        named = [(n, p) for m in self.chunks for n, p in m.named_parameters()]
        self._names = {id(p): n for n, p in named}
        self.buffers = self.optimizer = None
        if for_training:
            self._build_training_state(named)
        P2P.connect(g, self.device)
        self.trace: list | None = None  # set to a list to record compute intervals

    def _build_training_state(self, named: list) -> None:
        par, g = self.cfg.parallel, self.grid
        self.optim_impl = resolve_optim_impl(self.cfg.optim.impl, self.device)
        self.buffers = GradBuffers(
            named,
            g,
            par.bucket_size_mb,
            distributed=par.distributed_optimizer,
            overlap=par.overlap_grad_reduce,
            contiguous_params=par.distributed_optimizer or self.optim_impl == "cuda",
            tied=tied_embedding_params(self.chunks, self.cfg.model, g),
        )
        self.wgrad_fusion = resolve_grad_accum_fusion(self.cfg.model.grad_accum_fusion, self.device, self.dtype)
        if self.wgrad_fusion != "off":
            wgrad_fusion.enable(self.chunks, self.wgrad_fusion)
        groups = self._param_groups()
        overlap = bool(par.overlap_param_gather)
        self.optimizer = make_optimizer(self.optim_impl, self.buffers, groups, self.cfg.optim, self._names, overlap)
        gather = getattr(self.optimizer, "param_gather", None)
        if gather is not None and overlap:
            gather.install(self.chunks)  # forward pre-hooks: each unit waits for its buckets' gathers

    def sync_params(self) -> None:
        """Wait for every parameter all-gather still in flight (ZeRO-1 with `parallel.overlap_param_gather`
        leaves them to the next forward). Every reader of parameters outside the forward calls this:
        the state exports here, checkpoint save and load, the end of a run."""
        gather = getattr(self.optimizer, "param_gather", None)
        if gather is not None:
            gather.wait_all()

    # ------------------------------------------------------------------ helpers

    def _param_groups(self) -> list[dict]:
        merged: dict[str, dict] = {}
        for m in self.chunks:
            for grp in param_groups(m, self.cfg.model, self.cfg.optim.weight_decay):
                tgt = merged.setdefault(grp["name"], dict(grp, params=[]))
                tgt["params"].extend(grp["params"])
        return list(merged.values())

    def num_parameters(self) -> int:
        """The model's parameters at their true sizes (padding not counted)."""
        return count_parameters(self.cfg.model)

    def _check_batches(self, micro_batches) -> str | None:
        """The first problem with this rank's micro-batches, or None."""
        if not isinstance(micro_batches, (list, tuple)) or not micro_batches:
            return "micro_batches: expected a non-empty list of dicts"
        m, g = self.cfg.model, self.grid
        shape = None
        for i, b in enumerate(micro_batches):
            where = f"micro_batches[{i}]"
            if not isinstance(b, dict):
                return f"{where}: expected a dict, got {type(b).__name__}"
            for k in ("tokens", "labels", "loss_mask"):
                if k not in b:
                    return f"{where}: missing {k!r} (needs tokens, labels, loss_mask)"
            for k, v in b.items():
                if k not in ("tokens", "labels", "loss_mask", "position_ids", "segment_ids"):
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
        s = shape[1]
        if s > m.max_seq_len:
            return f"micro_batches: sequence length {s} exceeds model.max_seq_len={m.max_seq_len}"
        if self.sp and s % g.tp_size:
            return f"micro_batches: sequence length {s} is not divisible by tp={g.tp_size} (sequence parallel)"
        if g.vpp_size > 1 and len(micro_batches) % g.pp_size:
            return (
                f"micro_batches: interleaved 1F1B needs the number of micro-batches "
                f"({len(micro_batches)}) divisible by pp={g.pp_size}"
            )
        return None

    def _prepare(self, micro_batches) -> tuple[list[dict], float]:
        """Validate on every rank, agree on it (one all-reduce, so a bad batch on one rank fails
        every rank instead of hanging them), move to the device; returns the batches on the device
        and the global loss-token count."""
        err = self._check_batches(micro_batches)
        g = self.grid
        count = 0.0
        if err is None and g.tp_rank == 0 and g.pp_rank == 0:
            count = float(sum(b["loss_mask"].double().sum() for b in micro_batches))
        t = torch.tensor([1.0 if err else 0.0, count], dtype=torch.float64, device=self.device)
        C.all_reduce(t, g.world)
        if err is not None:
            raise ValueError(f"Engine: {err}")
        if t[0].item() > 0:
            raise ValueError(f"Engine: {int(t[0].item())} rank(s) reported invalid micro-batches (see their error)")
        batches = [
            {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
            for b in micro_batches
        ]
        for b in batches:
            b["loss_mask"] = b["loss_mask"].float()
        return batches, float(t[1].item())

    def _step(self, batches: list[dict], scale: float) -> StepCompute:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        return StepCompute(self.chunks, batches, scale, self.trace, sync)

    def _p2p(self, batches: list[dict]) -> P2P:
        b, s = batches[0]["tokens"].shape
        if self.sp:
            s //= self.grid.tp_size
        shape = (b, s, self.cfg.model.hidden_size)
        return P2P(self.grid, shape, self.dtype, self.device, self.trace, self.cfg.parallel.overlap_p2p_comm)

    def _global_loss_sum(self, step: StepCompute) -> float:
        g = self.grid
        holds = any(m.post_process for m in self.chunks) and g.tp_rank == 0
        t = step.loss_sum.clone() if holds else torch.zeros(1, dtype=torch.float64, device=self.device)
        C.all_reduce(t, g.world)
        return float(t.item())

    # ------------------------------------------------------------------ the API

    def train_step(self, micro_batches: list[dict], lr: float) -> dict:
        batches, tokens = self._prepare(micro_batches)
        denom = loss_denominator(self.cfg.optim.loss_normalization, tokens, batches, self.grid.dp_size)
        step = self._step(batches, 1.0 / denom)
        self.buffers.start_step(len(batches))
        for m in self.chunks:
            m.train()
        schedules.run(step, self._p2p(batches), self.grid)
        self.buffers.finish()
        if self.sp:
            self.buffers.allreduce_sequence_parallel()
        norm = self.buffers.grad_norm()
        loss = self._global_loss_sum(step) / denom
        # both are reduced over every rank that holds a part: all ranks take the same decision.
        # A non-finite step changes no state (parameters, masters, moments, the optimizer's step count).
        skipped = not (math.isfinite(norm) and math.isfinite(loss))
        if not skipped:
            clip_and_step(self.optimizer, self.buffers, norm, self.cfg.optim.clip_grad, lr)
        return dict(loss=loss, grad_norm=norm, tokens=tokens, skipped=skipped)

    @torch.no_grad()
    def eval_loss(self, micro_batches: list[dict]) -> tuple[float, float]:
        """(sum of masked per-token losses, sum of the mask), both over the global batch."""
        batches, tokens = self._prepare(micro_batches)
        self.sync_params()  # the forward pre-hooks would wait too; evaluation needs no overlap
        step = self._step(batches, 1.0)
        for m in self.chunks:
            m.eval()
        schedules.forward_only(step, self._p2p(batches), self.grid)
        return self._global_loss_sum(step), tokens

    def state_dict(self) -> dict:
        self.sync_params()
        model = {n: p.detach().to("cpu", copy=True) for m in self.chunks for n, p in m.named_parameters()}
        return dict(format=FORMAT, layout=self._layout(), model=model, optimizer=to_cpu(self.optimizer.state_dict()))

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        if not isinstance(sd, dict) or sd.get("format") != FORMAT:
            raise ValueError(
                f"engine state: expected format {FORMAT!r}, got {sd.get('format') if isinstance(sd, dict) else sd!r}"
            )
        mine, saved = self._layout(), dict(sd.get("layout") or {})
        if not self.cfg.parallel.distributed_optimizer:  # replicas are identical: any dp rank's state will do
            mine.pop("dp_rank")
            saved.pop("dp_rank", None)
        if saved != mine:
            raise ValueError(f"engine state: saved by rank layout {sd.get('layout')}, this rank is {self._layout()}")
        self.sync_params()
        params = {n: p for m in self.chunks for n, p in m.named_parameters()}
        missing = sorted(set(params) - set(sd["model"]))
        extra = sorted(set(sd["model"]) - set(params))
        if missing or extra:
            raise ValueError(f"engine state: model keys differ (missing {missing[:5]}, unexpected {extra[:5]})")
        for n, p in params.items():
            src = sd["model"][n]
            if tuple(src.shape) != tuple(p.shape):
                raise ValueError(f"engine state: model.{n} has shape {tuple(src.shape)}, expected {tuple(p.shape)}")
            p.copy_(src.to(p.dtype))
        self.optimizer.load_state_dict(to_device(sd["optimizer"], self.device))

    def _layout(self) -> dict:
        g = self.grid
        return dict(
            g.layout(),
            world=g.world_size,
            tp_rank=g.tp_rank,
            pp_rank=g.pp_rank,
            dp_rank=g.dp_rank,
            distributed_optimizer=bool(self.cfg.parallel.distributed_optimizer),
            precision=self.cfg.train.precision,
        )

    # ------------------------------------------------------------------ consolidated weights

    def serial_shapes(self) -> dict[str, tuple]:
        """Names and shapes of the serial model's parameters (the consolidated state dict)."""
        return {n: shape for n, (shape, _) in serial_layout(self.cfg.model).items()}

    @torch.no_grad()
    def full_model_state(self) -> dict | None:
        """The whole model under serial names and shapes (vocabulary and FFN padded as in the serial
        model), gathered over tp and pp onto global rank 0 as CPU tensors; None on the other ranks."""
        self.sync_params()
        g = self.grid
        local = self._gather_tp() if g.dp_rank == 0 else {}
        if g.dp_rank == 0 and g.tp_rank == 0 and g.pp_size > 1:
            local = self._gather_pp(local)
        if g.rank != 0:
            return None
        return {n: local[n].to("cpu", copy=True) for n in self.serial_shapes()}

    def _gather_tp(self) -> dict[str, torch.Tensor]:
        """This pipeline stage's parameters, whole over tp, in serial shapes: on tp rank 0 (empty on the
        others). Every tp rank of the replica takes part. The tied head copy is left out."""
        g = self.grid
        serial = self.serial_shapes()
        local: dict[str, torch.Tensor] = {}
        for m in self.chunks:
            for n, p in m.named_parameters():
                spec = param_spec(p)
                if spec.tied_copy:
                    continue
                full = p.detach()
                if spec.sharded and g.tp_size > 1:
                    full = C.all_gather_dim(full.contiguous(), spec.shard_dim, g.tp)
                if g.tp_rank == 0:
                    true = true_shape(p)
                    local[n] = refit(true_part(full, true), true, serial[n])
        return local

    def _gather_pp(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every stage's `_gather_tp` result onto the first stage (whose dict it returns, all stages
        merged); the other stages send theirs. Only the (dp 0, tp 0) rank of each stage takes part."""
        g = self.grid
        if g.pp_rank != 0:
            dist.send_object_list([[(n, tuple(t.shape), t.dtype) for n, t in local.items()]], dst=g.pp.ranks[0])
            for t in local.values():
                dist.send(t.contiguous(), dst=g.pp.ranks[0])
            return local
        for src in g.pp.ranks[1:]:
            meta = [None]
            dist.recv_object_list(meta, src=src)
            for n, shape, dtype in meta[0]:
                t = torch.empty(shape, dtype=dtype, device=self.device)
                dist.recv(t, src=src)
                local[n] = t
        return local

    @torch.no_grad()
    def load_full_model_state(self, sd: dict | None) -> None:
        """Set the weights from a serial-named state dict (as `full_model_state` returns). Give it on
        every rank, or on rank 0 only (then it is broadcast). The optimizer's fp32 masters follow;
        its moments are left as they are."""
        g = self.grid
        if g.world_size > 1:
            have = torch.tensor([1.0 if sd is not None else 0.0], device=self.device)
            C.all_reduce(have, g.world)
            if have.item() < g.world_size:
                first = [sd if g.rank == 0 else None]
                dist.broadcast_object_list(first, src=0)
                sd = first[0]
        if sd is None:
            raise ValueError("load_full_model_state: no state dict on rank 0")
        self.sync_params()
        layout = serial_layout(self.cfg.model)
        missing = sorted(set(layout) - set(sd))
        extra = sorted(set(sd) - set(layout))
        if missing or extra:
            raise ValueError(
                f"load_full_model_state: keys differ from the model's (missing {missing[:5]}, unexpected {extra[:5]})"
            )
        for n, (shape, true) in layout.items():  # every rank checks every tensor: none is left waiting
            problem = fit_problem(sd[n], true, shape)
            if problem:
                raise ValueError(f"load_full_model_state: {n} {problem}")
        for m in self.chunks:
            for n, p in m.named_parameters():
                spec = param_spec(p)
                key = (spec.seed_name or n) if spec.tied_copy else n
                full = refit(sd[key], true_shape(p), full_shape(p))
                p.copy_(spec.shard(full).to(device=p.device, dtype=p.dtype))
        if self.optimizer is not None:
            self.optimizer.reload_masters()
