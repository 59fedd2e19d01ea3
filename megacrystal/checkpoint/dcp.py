"""torch.distributed.checkpoint (DCP) glue: planners over rectangular pieces, and a reader that
never runs pickled code.

State handed to DCP is `{key: Pieces}`: a tensor's global (true) shape and the rectangles this rank
holds (`layout.Piece`). The planners only turn pieces into DCP's own `WriteItem`s /
`ReadItem`s (`create_read_items_for_chunk_list` does the resharding arithmetic) and find a piece again
by its offsets; DCP's default global planning, deduplication of replicated pieces, metadata and
FileSystemWriter/Reader do the rest. Tensor data is read with `torch.load(weights_only=True)` by DCP;
the `.metadata` file, which DCP pickles, is read here with an unpickler that admits only DCP's
metadata classes and plain containers (a tampered file raises instead of running code).
"""

from __future__ import annotations

import functools
import inspect
import io
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from torch.futures import Future

from .layout import Piece


@dataclass
class Pieces:
    """One checkpoint tensor as this rank sees it."""

    shape: tuple
    pieces: list[Piece]

    def find(self, index: MetadataIndex) -> torch.Tensor:
        if index.index is not None and index.index < len(self.pieces):
            p = self.pieces[index.index]
            if tuple(p.offsets) == tuple(index.offset):
                return p.tensor
        for p in self.pieces:
            if tuple(p.offsets) == tuple(index.offset):
                return p.tensor
        raise KeyError(f"{index.fqn}: no piece at {tuple(index.offset)}")


class PieceSavePlanner(DefaultSavePlanner):
    def __init__(self):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def set_up_planner(self, state_dict, storage_meta: StorageMeta | None = None, is_coordinator: bool = False):
        self.state_dict = state_dict
        self.is_coordinator = is_coordinator

    def create_local_plan(self) -> SavePlan:
        items = []
        for key, obj in self.state_dict.items():
            for p in obj.pieces:
                t = p.tensor
                items.append(
                    WriteItem(
                        index=MetadataIndex(key, torch.Size(p.offsets)),
                        type=WriteItemType.SHARD,
                        tensor_data=TensorWriteData(
                            chunk=ChunkStorageMetadata(offsets=torch.Size(p.offsets), sizes=t.size()),
                            properties=TensorProperties(dtype=t.dtype),
                            size=torch.Size(obj.shape),
                        ),
                    )
                )
        self.plan = SavePlan(items)
        return self.plan

    def lookup_object(self, index: MetadataIndex):
        return self.state_dict[index.fqn].find(index)


class PieceLoadPlanner(DefaultLoadPlanner):
    def __init__(self):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def set_up_planner(self, state_dict, metadata: Metadata | None = None, is_coordinator: bool = False):
        self.state_dict = state_dict
        self.original_state_dict = state_dict
        self.metadata = metadata
        self.is_coordinator = is_coordinator

    def create_local_plan(self) -> LoadPlan:
        md_all = self.metadata.state_dict_metadata
        requests = []
        for key, obj in self.state_dict.items():
            md = md_all.get(key)
            if md is None or not hasattr(md, "size"):
                raise KeyError(f"tensor {key!r} is not in the checkpoint")
            if tuple(md.size) != tuple(obj.shape):
                raise ValueError(
                    f"tensor {key!r} has shape {tuple(md.size)} in the checkpoint, this model has {obj.shape}"
                )
            chunks = [ChunkStorageMetadata(torch.Size(p.offsets), p.tensor.size()) for p in obj.pieces]
            requests += create_read_items_for_chunk_list(key, md, chunks)
        return LoadPlan(requests)

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self.state_dict[index.fqn].find(index)


def root_causes(e: BaseException) -> list[BaseException]:
    """The exceptions inside a DCP CheckpointException (one per failed rank), else [e]."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        return [f[0] if isinstance(f, tuple) else f for f in failures.values()]
    return [e]


def one_line(e: BaseException) -> str:
    """`Type: first line of the message` of the first root cause."""
    x = root_causes(e)[0]
    msg = str(x).strip().splitlines()
    return f"{type(x).__name__}: {msg[0][:300] if msg else ''}"


# ----------------------------------------------------------------------------- metadata without code

_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", None),  # Metadata, TensorStorageMetadata, chunks, enums
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # torch.strided by name
    ("torch", "Size"),
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
} | {
    ("torch", str(dt).removeprefix("torch."))
    for dt in (
        torch.float32,
        torch.float64,
        torch.bfloat16,
        torch.float16,
        torch.int64,
        torch.int32,
        torch.uint8,
        torch.bool,
    )
}


class MetadataError(ValueError):
    """`.metadata` refers to something other than DCP's metadata classes."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED or (module, None) in _ALLOWED:
            return super().find_class(module, name)
        raise MetadataError(f"refers to {module}.{name}, which is not checkpoint metadata")


def read_metadata_safely(data: bytes) -> Metadata:
    md = _SafeUnpickler(io.BytesIO(data)).load()
    if not isinstance(md, Metadata):
        raise MetadataError(f"holds a {type(md).__name__}, expected DCP Metadata")
    return md


class SafeFileSystemReader(FileSystemReader):
    """FileSystemReader whose `.metadata` is unpickled with an allow-list (see `_ALLOWED`), and which
    deserialises each stored piece once per rank however many requested rectangles it overlaps.

    DCP's own reader runs `torch.load` on the whole stored piece for every read request; loading on
    another layout turns one stored piece into several requests (a ZeRO slice is up to three
    rectangles, and a tensor-parallel piece feeds both halves of a pipeline-parallel split), so
    each piece was read and unpickled up to three times. Here requests are sorted by their place in
    the file and consecutive requests of the same piece share one load.
    """

    def read_data(self, plan: LoadPlan, planner) -> Future:
        storage = self.storage_data
        if any(getattr(storage[r.storage_index], "transform_descriptors", None) for r in plan.items):
            return super().read_data(plan, planner)  # a transformed (e.g. compressed) file: DCP's reader
        per_file: dict[str, list] = {}
        for req in plan.items:
            per_file.setdefault(storage[req.storage_index].relative_path, []).append(req)
        for rel, reqs in per_file.items():
            reqs.sort(key=lambda r: storage[r.storage_index].offset)
            with self.fs.create_stream(self.fs.concat_path(self.path, rel), "rb") as stream:
                where, held = None, None
                for req in reqs:
                    info = storage[req.storage_index]
                    if where != (info.offset, info.length):
                        stream.seek(info.offset)
                        raw = stream.read(info.length)
                        if len(raw) != info.length:
                            raise OSError(f"{rel}: {len(raw)} bytes at {info.offset}, expected {info.length}")
                        where, held = (info.offset, info.length), raw
                        if req.type != LoadItemType.BYTE_IO:
                            held = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
                        del raw  # only the deserialised piece stays while its requests are served
                    if req.type == LoadItemType.BYTE_IO:
                        planner.load_bytes(req, io.BytesIO(held))
                        continue
                    src = held
                    for d, (o, n) in enumerate(zip(req.storage_offsets, req.lengths, strict=True)):
                        src = src.narrow(d, o, n)
                    dst = planner.resolve_tensor(req).detach()
                    if dst.shape != src.shape:
                        raise ValueError(
                            f"{rel}: piece of {req.dest_index.fqn} is {tuple(src.shape)}, expected {tuple(dst.shape)}"
                        )
                    dst.copy_(src)
                    planner.commit_tensor(req, dst)
        fut: Future = Future()
        fut.set_result(None)
        return fut

    def read_metadata(self, *args, **kwargs) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            md = read_metadata_safely(f.read())
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


# ----------------------------------------------------------------------------- writes that keep their errors


class _Watched:
    """A file whose write errors are recorded before they propagate: torch.save's zip writer turns an
    OSError (ENOSPC) into `RuntimeError: ... unexpected pos`, losing the errno; the record keeps it."""

    def __init__(self, f, errors: list):
        self._f, self._errors = f, errors

    def _call(self, name, *args):
        try:
            return getattr(self._f, name)(*args)
        except OSError as e:
            self._errors.append(e)
            raise

    def write(self, b):
        return self._call("write", b)

    def flush(self):
        return self._call("flush")

    def close(self):
        return self._call("close")

    def __getattr__(self, name):
        return getattr(self._f, name)


class _WatchedFileSystem(FileSystem):
    def __init__(self, errors: list):
        self.errors = errors

    @contextmanager
    def create_stream(self, path, mode):
        try:
            with super().create_stream(path, mode) as f:
                yield _Watched(f, self.errors) if "w" in mode else f
        except OSError as e:  # also what the final flush on close meets
            self.errors.append(e)
            raise


@functools.cache
def _lean_write_supported() -> bool:
    """Whether this torch's FileSystemWriter has the hook (`_write_data`) and the item writer
    (`_write_item`, same signature) that the lean write relies on."""
    try:
        from torch.distributed.checkpoint import filesystem as fs

        params = list(inspect.signature(fs._write_item).parameters)
    except (ImportError, AttributeError, TypeError, ValueError):
        return False
    want = ["transforms", "stream", "data", "write_item", "storage_key", "serialization_format"]
    return params == want and hasattr(FileSystemWriter, "_write_data")


class WatchedFileSystemWriter(FileSystemWriter):
    """DCP's FileSystemWriter; `self.errors` lists the OSErrors its writes met.

    `lean=True` (CPU state): each file is written one piece at a time, and a piece's compact copy is
    dropped once written. DCP's own loop keeps every written tensor of a file until the file is done
    (for its safetensors option), so a rank's whole state is copied into host memory during a save;
    here the extra memory is one piece. Falls back to DCP's loop on a torch without the same hook.
    """

    def __init__(self, path, lean: bool = False, **kw):
        super().__init__(path, **kw)
        self.errors: list = []
        self.fs = _WatchedFileSystem(self.errors)
        self.lean = lean and _lean_write_supported() and getattr(self, "thread_count", 1) == 1

    def _write_data(self, planner, file_queue):
        if not self.lean:
            return super()._write_data(planner, file_queue)
        from torch.distributed.checkpoint.filesystem import _write_item

        results = []
        while not file_queue.empty():
            path, name, items = file_queue.get_nowait()
            items = sorted(items, key=lambda i: i.type != WriteItemType.BYTE_IO)  # bytes first, as DCP does
            with self.fs.create_stream(path, "wb") as stream:
                for item in items:
                    data = planner.resolve_data(item)
                    if item.type != WriteItemType.BYTE_IO:
                        data = data.detach().cpu()
                        if data.untyped_storage().nbytes() != data.nbytes:
                            data = data.clone()  # a view of a larger buffer: write only its elements
                    results.append(_write_item(self.transforms, stream, data, item, name, self.serialization_format))
                    del data
                if self.sync_files:
                    stream.flush()
                    os.fsync(stream.fileno())
        fut: Future = Future()
        fut.set_result(results)
        return fut
