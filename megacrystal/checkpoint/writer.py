"""Saving and loading sharded checkpoints with torch.distributed.checkpoint (DCP).

    ckpt = Checkpointer(engine, out_dir, async_save=True, tokenizer_path=...)
    ckpt.save(step, trainer_state)    # stages this rank's pieces, returns; the write runs in the background
    ckpt.wait()                       # the previous save is committed (raises its CheckpointError)
    meta = ckpt.load(path)            # any layout: weights, Adam moments, optimizer step, RNG (same layout)
    cfg, sd = load_model_state(path)  # offline, no process group: the serial model's state dict

Every rank writes only its own pieces (`layout`); nobody gathers the model. A save goes
into `step_X.tmp/`: DCP writes and fsyncs every rank's file and the metadata, each rank checksums its
files, rank 0 writes trainer.json and manifest.json (last), renames the directory to `step_X`, then
updates `latest`. Asynchronous saves run this on a background thread over a process group of their
own (gloo), so training continues while the previous checkpoint is written; a new save first waits
for the previous one. A failed save (e.g. a full disk) removes its partial directory on every rank's
agreement and leaves the older checkpoints alone.
"""

from __future__ import annotations

import errno
import json
import shutil
import warnings
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from ..atomic_io import atomic_write, fsync_dir
from ..log import get_logger
from ..parallel.host_group import host_group
from .dcp import Pieces, PieceSavePlanner, WatchedFileSystemWriter, one_line, root_causes
from .files import apply_retention, file_crc, move_aside, write_manifest
from .format import FORMAT, MANIFEST, TRAINER, VERSION, CheckpointError, CheckpointSpaceError, step_name
from .layout import Piece, global_shapes, local_pieces, model_dict, rng_pieces
from .load import load_engine_state

_LIVE: weakref.WeakSet = weakref.WeakSet()


def finish_pending() -> None:
    """Wait for every checkpoint still being written (before process groups are destroyed)."""
    for ck in list(_LIVE):
        try:
            ck.close()
        except (Exception, dcp.api.CheckpointException) as e:
            get_logger().error(f"checkpoint save failed: {e}")


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def checkpoint_group(timeout_s: float = 1800.0):
    """A gloo process group over every rank for checkpoint traffic (None on one process)."""
    return host_group(timeout_s)


def _rank(group) -> int:
    return dist.get_rank(group) if group is not None else 0


def _barrier(group) -> None:
    if group is not None:
        dist.barrier(group=group)


class Checkpointer:
    def __init__(self, engine, out_dir, async_save: bool = True, tokenizer_path: str | None = None, group="new"):
        self.engine = engine
        self.root = Path(out_dir) / "checkpoints"
        self.async_save = async_save
        self.tokenizer_path = tokenizer_path
        timeout = float(getattr(engine.cfg.parallel, "timeout_s", 1800.0) or 1800.0)
        self.group = checkpoint_group(timeout) if group == "new" else group  # bounded like every other group
        self.rank = _rank(self.group)
        self.protect: tuple = ()  # paths retention never removes (the checkpoint resumed from)
        self.keep, self.keep_every = 0, 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint") if async_save else None
        self._pending: Future | None = None
        self._cache: dict = {}
        self.last_stall_s = 0.0
        _LIVE.add(self)

    # ------------------------------------------------------------------ save

    def _stage(self, copy: bool = True) -> dict[str, Pieces]:
        """This rank's pieces, tied copies left out. `copy` (asynchronous saves): compact CPU copies,
        reused between saves. Without (synchronous saves: training waits anyway) the live views are
        handed to DCP, whose writer copies one piece at a time to compact CPU memory as it writes it,
        so a synchronous save needs no second copy of the state in host memory."""
        shapes = global_shapes(self.engine)
        out: dict[str, Pieces] = {}
        cuda = self.engine.device.type == "cuda"
        for key, pieces in local_pieces(self.engine).items():
            mine = []
            for p in pieces:
                if p.tied_copy:
                    continue
                if not copy:
                    mine.append(Piece(p.offsets, p.tensor.detach()))
                    continue
                ck = (key, tuple(p.offsets), tuple(p.tensor.shape))
                buf = self._cache.get(ck)
                if buf is None:
                    buf = torch.empty(p.tensor.shape, dtype=p.tensor.dtype, pin_memory=cuda)
                    self._cache[ck] = buf
                buf.copy_(p.tensor, non_blocking=cuda)
                mine.append(Piece(p.offsets, buf))
            if mine:
                out[key] = Pieces(shapes[key], mine)
        for key, pieces in rng_pieces(self.engine).items():
            out[key] = Pieces(tuple(pieces[0].tensor.shape), pieces)
        if cuda:
            torch.cuda.synchronize(self.engine.device)
        return out

    def save(self, step: int, trainer_state: dict, config: dict | None = None) -> None:
        """Checkpoint `step`. Asynchronous: returns once this rank's state is copied."""
        import time

        self.wait()
        self.engine.sync_params()  # no parameter all-gather still in flight (parallel.overlap_param_gather)
        t0 = time.perf_counter()
        staged = self._stage(copy=self._pool is not None)
        g = self.engine.grid
        meta = dict(
            format=FORMAT,
            version=VERSION,
            step=step,
            optimizer_step=int(self.engine.optimizer.step_count),
            layout=dict(g.layout(), world=g.world_size),
            distributed_optimizer=bool(self.engine.cfg.parallel.distributed_optimizer),
            precision=self.engine.cfg.train.precision,
            model=model_dict(self.engine.cfg.model),
            config=config if config is not None else self.engine.cfg.to_dict(),
            **trainer_state,
        )
        if self._pool is None:
            self._write(step, staged, meta)
            self.last_stall_s = time.perf_counter() - t0
        else:
            self.last_stall_s = time.perf_counter() - t0
            self._pending = self._pool.submit(self._write, step, staged, meta)

    def wait(self) -> None:
        """Block until the pending save is committed; re-raises its error."""
        fut, self._pending = self._pending, None
        if fut is not None:
            fut.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _write(self, step: int, staged: dict, meta: dict) -> Path:
        group, rank0 = self.group, self.rank == 0
        name = step_name(step)
        tmp, final = self.root / f"{name}.tmp", self.root / name
        nbytes = sum(p.tensor.numel() * p.tensor.element_size() for v in staged.values() for p in v.pieces)
        total = torch.tensor([nbytes], dtype=torch.float64)
        if group is not None:
            dist.all_reduce(total, group=group)
        if rank0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # a save of this step that died before its rename: never a checkpoint
                shutil.rmtree(tmp)
            tmp.mkdir()
        _barrier(group)
        problem = None
        writer = WatchedFileSystemWriter(tmp, sync_files=True, overwrite=False, lean=self.engine.device.type == "cpu")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dcp.save(
                    staged,
                    storage_writer=writer,
                    planner=PieceSavePlanner(),
                    process_group=group,
                    no_dist=group is None,
                )
            mine = {p.name: file_crc(p) for p in tmp.glob(f"__{self.rank}_*.distcp")}
        except (Exception, dcp.api.CheckpointException) as e:  # every rank reaches the agreement below
            problem, mine = _describe(e, tmp, int(total.item()), writer.errors), {}
        every = [(problem, mine)]
        if group is not None:
            every = [None] * dist.get_world_size(group)
            dist.all_gather_object(every, (problem, mine), group=group)
        problem = next((p for p, _ in every if p), None)
        if problem is None and rank0:
            try:
                files = {k: v for _, m in every for k, v in m.items()}
                self._commit(tmp, final, meta, files)
            except (Exception, dcp.api.CheckpointException) as e:
                problem = _describe(e, tmp, int(total.item()))
        if group is not None:
            verdict = [problem]
            dist.broadcast_object_list(verdict, src=dist.get_global_rank(group, 0), group=group)
            problem = verdict[0]
        if problem is not None:
            if rank0:
                shutil.rmtree(tmp, ignore_errors=True)
            _barrier(group)
            raise (CheckpointSpaceError if "no space left" in problem else CheckpointError)(problem)
        _barrier(group)
        return final

    def _commit(self, tmp: Path, final: Path, meta: dict, files: dict) -> None:
        from ..model.serialization import copy_tokenizer

        atomic_write(tmp / TRAINER, (json.dumps(meta, indent=1) + "\n").encode())
        if self.tokenizer_path:
            copy_tokenizer(self.tokenizer_path, tmp)
        for p in tmp.iterdir():
            if p.is_file() and p.name not in files and p.name != MANIFEST:
                files[p.name] = file_crc(p)
        fsync_dir(tmp)
        write_manifest(tmp, files)
        if final.exists():
            moved = move_aside(final)
            get_logger().warning(f"{final} already existed; moved it to {moved.name}")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(final)
        fsync_dir(final.parent)
        try:
            atomic_write(self.root / "latest", final.name.encode())
        except OSError as e:  # the checkpoint is committed; `latest` is only a hint
            get_logger().warning(
                f"{self.root / 'latest'}: not updated ({e}); {final.name} is complete and a resume finds it by scanning"
            )
        get_logger().info(f"saved checkpoint {final}")
        apply_retention(self.root, self.keep, self.keep_every, protect=(final, *self.protect))

    # ------------------------------------------------------------------ load

    def load(self, path, with_optimizer: bool = True, check_precision: bool = True) -> dict:
        """Load checkpoint `path` into the engine (collective); returns its trainer.json."""
        return load_engine_state(self.engine, Path(path), self.group, with_optimizer, check_precision)


def _describe(e: BaseException, tmp: Path, total: int, recorded: tuple = ()) -> str:
    """One line for a failed save; a full disk names the path, the bytes needed and free."""
    errs = [*recorded, *root_causes(e), e]
    seen = set()
    while errs:
        x = errs.pop()
        if id(x) in seen or x is None:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            try:
                free = shutil.disk_usage(tmp.parent).free
            except OSError:
                free = -1
            return (
                f"{tmp}: no space left on device writing the checkpoint (needs about {total / 2**20:.1f} MiB, "
                f"{free / 2**20:.1f} MiB free); the partial write was removed, earlier checkpoints are kept"
            )
        errs += [x.__cause__, x.__context__]
    return f"{tmp}: save failed ({one_line(e)})"
