"""The training engine: one model, wrapped in whatever tp x cp x pp x dp grid the config asks for.

    engine = Engine(cfg, device)                      # after init_distributed (or a plain process)
    out = engine.train_step(micro_batches, lr)        # {loss, grad_norm, tokens, skipped}
    loss_sum, tokens = engine.eval_loss(micro_batches)
    engine.state_dict() / load_state_dict(sd)         # this rank's model + optimizer shard
    engine.full_model_state() / load_full_model_state(src)  # serial-named: gathered on rank 0 / read per rank

`micro_batches` are this dp rank's micro-batches of one optimizer step (every tp/pp rank of the
replica gets the same list): dicts of CPU tensors tokens, labels, loss_mask [b, s] and optionally
position_ids, segment_ids. Under context parallelism each cp rank gets its part of every sequence
(`data.context_parallel.split_micro_batch`), and gradients are summed over dp x cp. The loss is
sum(loss * mask) / sum(mask) over the global batch, and its gradient is exactly that of the serial
model on the whole batch: every micro-batch's loss is divided by the global token count first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import torch.distributed as dist
from torch.profiler import record_function

from ..compiled.select import resolve_grad_accum_fusion, resolve_optim_impl
from ..config import Config, ResolvedModelConfig
from ..data.batch import finish_batch
from ..model import wgrad_fusion
from ..model.layers import SerialLayers
from ..model.mup import init_parameters, param_groups
from ..model.padding import refit, true_part, true_shape
from ..model.param_spec import param_spec
from ..model.transformer import count_parameters, serial_layout
from ..optim.factory import clip_and_step, make_optimizer
from ..optim.loss_normalization import loss_denominator
from ..parallel import collectives as C
from ..parallel import pipeline_schedules as schedules
from ..parallel.grad_buffers import GradBuffers
from ..parallel.host import to_host
from ..parallel.p2p import P2P
from ..parallel.pipeline import build_chunks, tied_embedding_params
from ..parallel.ring_attention import RingContext
from ..parallel.state import Grid, build_grid
from ..parallel.step import StepCompute
from ..parallel.tensor import TensorParallelLayers
from .batch_checks import batch_problem
from .weights import load_weights

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
        optimizer state allocated. `init_weights=False`: the parameters start at zero and nothing is
        drawn, for a caller that loads weights next (a checkpoint, `load_full_model_state`) or calls
        `draw_initial_weights`. `cfg` is read, never changed (an unresolved model config is resolved
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
        # model on the way); each rank draws the values of its own slice there (model/init_draw.py)
        with torch.device(self.device), _default_dtype(self.dtype):
            self.chunks = build_chunks(cfg.model, self.layers, g)
        for m in self.chunks:
            if init_weights and self.device.type != "meta":  # meta tensors hold no values to draw
                init_parameters(m, cfg.model, cfg.train.seed)
            else:
                for p in m.parameters():
                    p.detach().zero_()
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
        self.optim_impl = resolve_optim_impl(self.cfg.optim.impl, self.device, dtype=self.dtype)
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
        """Wait for every parameter all-gather in flight (ZeRO-1 with `parallel.overlap_param_gather` leaves
        them to the next forward): every reader of parameters outside the forward calls this."""
        gather = getattr(self.optimizer, "param_gather", None)
        if gather is not None:
            gather.wait_all()

    @torch.no_grad()
    def draw_initial_weights(self) -> None:
        """The seeded initial weights (what `init_weights=True` draws), after an `init_weights=False`
        construction; the optimizer's masters follow."""
        for m in self.chunks:
            init_parameters(m, self.cfg.model, self.cfg.train.seed)
        if self.optimizer is not None:
            self.optimizer.reload_masters()

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
        return batch_problem(micro_batches, self.cfg, self.grid, self.sp)

    def _prepare(self, micro_batches, stop: bool = False) -> tuple[list[dict] | None, float]:
        """Validate on every rank and agree on it, with the global loss-token count and the stop flag
        in the same all-reduce and one host read (so a bad batch on one rank fails every rank instead
        of hanging them); move to the device. Returns (batches on the device, or None when some rank
        asked to stop; the global loss-token count)."""
        err = self._check_batches(micro_batches)
        g = self.grid
        count = 0.0
        if err is None and g.tp_rank == 0 and g.pp_rank == 0:
            count = float(sum(b["loss_mask"].double().sum() for b in micro_batches))
        t = torch.tensor([1.0 if err else 0.0, count, 1.0 if stop else 0.0], dtype=torch.float64, device=self.device)
        C.all_reduce(t, g.world)
        if err is not None:
            raise ValueError(f"Engine: {err}")
        invalid, tokens, stops = to_host(t, "step.check")
        if invalid > 0:
            raise ValueError(f"Engine: {int(invalid)} rank(s) reported invalid micro-batches (see their error)")
        if stops > 0:
            return None, tokens
        batches = []
        for b in micro_batches:
            whole = g.cp_size == 1  # a cp rank's part attends through the ring (cp_doc_start), not cu_seqlens
            if whole and self.cfg.model.document_mask and b.get("segment_ids") is not None and "cu_seqlens" not in b:
                b = finish_batch(dict(b))  # document boundaries computed on the host, as the loader does
            batches.append(
                {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
            )
        for b in batches:
            b["loss_mask"] = b["loss_mask"].float()
            if g.cp_size > 1:
                starts = b.get("cp_doc_start") if self.cfg.model.document_mask else None
                b["cp_context"] = RingContext(g.cp, starts)
        return batches, tokens

    def _step(self, batches: list[dict], scale: float) -> StepCompute:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        return StepCompute(self.chunks, batches, scale, self.trace, sync)

    def _p2p(self, batches: list[dict]) -> P2P:
        b, s = batches[0]["tokens"].shape
        if self.sp:
            s //= self.grid.tp_size
        shape = (b, s, self.cfg.model.hidden_size)
        return P2P(self.grid, shape, self.dtype, self.device, self.trace, self.cfg.parallel.overlap_p2p_comm)

    def _loss_part(self, step: StepCompute) -> torch.Tensor:
        """This rank's part of the global loss sum (the last stage's tp rank 0 holds one per replica)."""
        holds = any(m.post_process for m in self.chunks) and self.grid.tp_rank == 0
        return step.loss_sum if holds else torch.zeros(1, dtype=torch.float64, device=self.device)

    def _norm_and_loss(self, step: StepCompute) -> tuple[float, float, bool | None]:
        """The global gradient norm, loss sum and (fused optimizer) whether a gradient it reads is
        non-finite: one all-reduce over the world, one host read."""
        parts = [self.buffers.norm_sq_part(), self._loss_part(step)]
        fused = getattr(self.optimizer, "nonfinite_part", None)
        if fused is not None:  # it updates in place: the verdict must come before its launches
            parts.append(fused())
        t = torch.cat(parts)
        C.all_reduce(t, self.grid.world)
        values = to_host(t, "step.norm")
        return math.sqrt(values[0]), values[1], (values[2] > 0 if fused is not None else None)

    # ------------------------------------------------------------------ the API

    def train_step(self, micro_batches: list[dict], lr: float, stop: bool = False) -> dict:
        """One optimizer step. `stop`: this rank got a stop signal; when any rank did, no step runs
        and the result says `stopped` (every rank alike: the flag travels with the batch check)."""
        with record_function("megacrystal.train_step"):  # a profiler range (and a rehearsal's step marker)
            return self._train_step(micro_batches, lr, stop)

    def _train_step(self, micro_batches: list[dict], lr: float, stop: bool) -> dict:
        batches, tokens = self._prepare(micro_batches, stop)
        if batches is None:
            return dict(loss=math.nan, grad_norm=math.nan, tokens=tokens, skipped=False, stopped=True)
        g = self.grid  # each of the dp x cp ranks holds as many positions of the global batch
        denom = loss_denominator(self.cfg.optim.loss_normalization, tokens, batches, g.dp_size * g.cp_size)
        step = self._step(batches, 1.0 / denom)
        self.buffers.start_step(len(batches))
        for m in self.chunks:
            m.train()
        with record_function("megacrystal.schedule"):  # the forwards and backwards (a rehearsal's sub-section)
            schedules.run(step, self._p2p(batches), self.grid)
        self.buffers.finish()
        if self.sp:
            self.buffers.allreduce_sequence_parallel()
        norm, loss_sum, nonfinite = self._norm_and_loss(step)
        loss = loss_sum / denom
        # all are reduced over every rank that holds a part: all ranks take the same decision.
        # A non-finite step changes no state (parameters, masters, moments, the optimizer's step count).
        skipped = not (math.isfinite(norm) and math.isfinite(loss)) or bool(nonfinite)
        if not skipped:
            skipped = not clip_and_step(self.optimizer, self.buffers, norm, self.cfg.optim.clip_grad, lr, nonfinite)
        return dict(loss=loss, grad_norm=norm, tokens=tokens, skipped=skipped, stopped=False)

    @torch.no_grad()
    def eval_loss(self, micro_batches: list[dict]) -> tuple[float, float]:
        """(sum of masked per-token losses, sum of the mask), both over the global batch."""
        batches, tokens = self._prepare(micro_batches)
        self.sync_params()  # the forward pre-hooks would wait too; evaluation needs no overlap
        step = self._step(batches, 1.0)
        for m in self.chunks:
            m.eval()
        schedules.forward_only(step, self._p2p(batches), self.grid)
        t = self._loss_part(step).clone()
        C.all_reduce(t, self.grid.world)
        return to_host(t, "eval.loss")[0], tokens

    def state_dict(self) -> dict:
        self.sync_params()
        model = {n: p.detach().to("cpu", copy=True) for m in self.chunks for n, p in m.named_parameters()}
        return dict(format=FORMAT, layout=self._layout(), model=model, optimizer=_to_cpu(self.optimizer.state_dict()))

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        if not isinstance(sd, dict) or sd.get("format") != FORMAT:
            raise ValueError(
                f"engine state: expected format {FORMAT!r}, got {sd.get('format') if isinstance(sd, dict) else sd!r}"
            )
        mine, saved = self._layout(), dict(sd.get("layout") or {})
        if not self.cfg.parallel.distributed_optimizer:  # replicas are identical: any dp/cp rank's state will do
            for k in ("dp_rank", "cp_rank"):
                mine.pop(k, None)
                saved.pop(k, None)
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
        self.optimizer.load_state_dict(_to_device(sd["optimizer"], self.device))

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
            **(dict(cp_rank=g.cp_rank) if g.cp_size > 1 else {}),
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
        first = g.dp_rank == 0 and g.cp_rank == 0  # the replica that holds global rank 0
        local = self._gather_tp() if first else {}
        if first and g.tp_rank == 0 and g.pp_size > 1:
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

    def load_full_model_state(self, source) -> None:
        """Set the weights from serial-named tensors: a dict, or a `model/weight_source.py` source
        (files read by slices), given on every rank; each rank reads only the part it keeps
        (engine/weights.py). The optimizer's masters follow; its moments are left as they are."""
        self.sync_params()  # no parameter all-gather still in flight may overwrite what is loaded
        load_weights(self, source)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj
