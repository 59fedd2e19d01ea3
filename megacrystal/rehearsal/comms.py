"""torch.distributed as a play sees it: every collective, transfer and work handle recorded, checked.

`Comms.installed()` wraps the functions of `torch.distributed` the product calls (`dist.X` is looked
up at call time). For each call it records the op, the group (its creation number, name and size),
dtype, shape, reduce op, payload bytes, section and the project frame; an async call's work handle
records where it is waited on. Substitutions (the seams this layer owns, listed in docs):

- `new_group(backend="gloo")` (host-side groups: checkpoint traffic, set-up handshakes) becomes a
  `cpu:fake` group: gloo cannot start in a fake world;
- a collective whose tensor lives on a device its group has no backend for (a host tensor on the
  `meta:fake` device group, as on NCCL) is a finding and is skipped, so the play goes on;
- object collectives on fake groups return this rank's object for every member (a fake group moves
  no bytes, so the receiving side would unpickle nothing);
- `torch.distributed.checkpoint.save` plans the save (local and global plan, bytes per rank) and
  writes nothing: meta tensors hold no bytes.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from .frames import where

COLLECTIVES = {  # name -> (primary tensor argument, bytes from: "in" | "out")
    "all_reduce": ("tensor", "in"),
    "broadcast": ("tensor", "in"),
    "all_gather_into_tensor": ("output_tensor", "out"),
    "all_gather_single": ("output_tensor", "out"),
    "reduce_scatter_tensor": ("input", "in"),
    "reduce_scatter_single": ("input", "in"),
    "all_gather": ("tensor_list", "out"),
    "reduce_scatter": ("input_list", "in"),
    "barrier": (None, "in"),
}
DEPTH = 6  # frames kept per issue and wait: deep enough to pass the collective wrappers to their caller
OBJECT_COLLECTIVES = ("all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list")


class _Done:
    def wait(self, *args, **kwargs):
        return True

    def is_completed(self):
        return True


class _Work:
    """A work handle that notes where it is waited on (for every call it completes: a batch of
    transfers is one work per transfer, or one for the whole batch)."""

    def __init__(self, work, recs: list[dict], comms: Comms):
        self._work, self._recs, self._comms = work, recs, comms

    def wait(self, *args, **kwargs):
        play = self._comms.play
        for rec in self._recs:
            if "waited_at" not in rec:
                rec["waited_at"] = where(depth=DEPTH)
                rec["wait_order"] = play.next_order()
                rec["wait_cursor"] = play.cursor()
        return self._work.wait(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._work, name)


def _devices(pg) -> frozenset:
    b = str(dist.get_backend(pg))
    if ":" in b:
        return frozenset(part.split(":")[0] for part in b.split(","))
    return frozenset({"cuda"} if b == "nccl" else {"cpu", "cuda", "meta"})


def _tensors(x) -> list:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


class Comms:
    def __init__(self, play, group_names: dict[tuple, str], host_backend: str = "cpu:fake"):
        self.play = play
        self.names = group_names
        self.host_backend = host_backend
        self.groups: dict[int, dict] = {}  # id(pg) -> {id, name, ranks, devices}
        self._created = 0
        self._orig: dict = {}
        self._sigs: dict = {}

    # ---------------------------------------------------------------- groups

    def group(self, pg) -> dict:
        if pg is None:
            pg = dist.distributed_c10d._get_default_group()
        info = self.groups.get(id(pg))
        if info is None:  # the default group
            ranks = tuple(dist.get_process_group_ranks(pg))
            info = dict(id="world", name="world", ranks=ranks, devices=_devices(pg), pg=pg)
            self.groups[id(pg)] = info
        return info

    def _new_group(self, *args, **kwargs):
        bound = self._bind("new_group", args, kwargs)
        n = self._created
        self._created += 1
        host = bound.get("backend") in ("gloo", "cpu:gloo")
        if host:
            bound["backend"] = self.host_backend
        pg = self._orig["new_group"](**bound)
        ranks = bound.get("ranks")
        ranks = tuple(sorted(ranks)) if ranks is not None else tuple(range(dist.get_world_size()))
        if pg is not None and pg != dist.GroupMember.NON_GROUP_MEMBER:
            name = "host" if host else self.names.get(ranks, "group")
            self.groups[id(pg)] = dict(id=f"g{n}", name=name, ranks=ranks, devices=_devices(pg), pg=pg)
        return pg

    # ---------------------------------------------------------------- calls

    def _bind(self, name: str, args, kwargs) -> dict:
        """The call's arguments by name (positional ones mapped by the signature; defaults left out)."""
        names = self._sigs.get(name)
        if names is None:
            names = self._sigs[name] = list(inspect.signature(self._orig[name]).parameters)
        out = dict(zip(names, args, strict=False))  # the rest keep their defaults
        out.update(kwargs)
        return out

    def _record(self, rec: dict) -> dict:
        rec.update(
            section=self.play.section, frame=where(depth=DEPTH), order=self.play.next_order(), cursor=self.play.cursor()
        )
        self.play.collectives.append(rec)
        return rec

    def _collective(self, name: str, args, kwargs):
        a = self._bind(name, args, kwargs)
        info = self.group(a.get("group"))
        primary, side = COLLECTIVES[name]
        tensors = _tensors([v for k, v in a.items() if k not in ("group",)])
        main = _tensors(a.get(primary)) if primary else []
        op = a.get("op")
        rec = dict(
            op=name,
            group=info["id"],
            group_name=info["name"],
            group_size=len(info["ranks"]),
            dtype=str(main[0].dtype).replace("torch.", "") if main else None,
            shape=[list(t.shape) for t in main],
            reduce=str(op).split(".")[-1] if op is not None else None,
            bytes=sum(t.numel() * t.element_size() for t in main),
            async_op=bool(a.get("async_op")),
        )
        self._record(rec)
        bad = [t for t in tensors if t.device.type not in info["devices"]]
        if bad:
            t = bad[0]
            call = f"{name}({t.device.type} {str(t.dtype).replace('torch.', '')}{list(t.shape)}) on {_label(info)}"
            self.play.finding("host_tensor", call, rec["frame"])
            rec["skipped"] = True
            return _Done() if a.get("async_op") else None
        for t in tensors:
            self.play.memory.mark(t, "communication")
        out = self._orig[name](**a)
        if a.get("async_op") and out is not None:
            return _Work(out, [rec], self)
        return out

    def _batch(self, p2p_op_list):
        recs, ok = [], True
        for op in p2p_op_list:
            info = self.group(op.group)
            send = getattr(op.op, "__name__", "") == "isend"
            t = op.tensor
            rec = dict(
                kind="send" if send else "recv",
                peer=int(op.peer),
                tag=int(op.tag),
                dtype=str(t.dtype).replace("torch.", ""),
                shape=list(t.shape),
                bytes=t.numel() * t.element_size(),
                group=info["id"],
                group_name=info["name"],
                section=self.play.section,
                frame=where(depth=DEPTH),
                order=self.play.next_order(),
                cursor=self.play.cursor(),
            )
            self.play.p2p.append(rec)
            recs.append(rec)
            if t.device.type not in info["devices"]:
                call = f"{rec['kind']}({t.device.type} {rec['dtype']}{rec['shape']}) to/from rank {rec['peer']}"
                self.play.finding("host_tensor", call, rec["frame"])
                ok = False
            else:
                self.play.memory.mark(t, "communication")
        if not ok:
            return [_Done()]
        works = self._orig["batch_isend_irecv"](p2p_op_list)
        if len(works) == len(recs):  # one work per transfer
            return [_Work(w, [r], self) for w, r in zip(works, recs, strict=True)]
        return [_Work(w, recs, self) for w in works]  # one work for the whole batch (NCCL's coalesced)

    def _p2p(self, name: str, args, kwargs):
        a = self._bind(name, args, kwargs)
        t = a["tensor"]
        info = self.group(a.get("group"))
        peer = a.get("dst") if name == "send" else a.get("src")
        rec = dict(
            kind=name,
            peer=int(peer) if peer is not None else -1,
            tag=int(a.get("tag") or 0),
            dtype=str(t.dtype).replace("torch.", ""),
            shape=list(t.shape),
            bytes=t.numel() * t.element_size(),
            group=info["id"],
            group_name=info["name"],
            section=self.play.section,
            frame=where(),
            order=self.play.next_order(),
        )
        self.play.p2p.append(rec)
        if t.device.type not in info["devices"]:
            self.play.finding("host_tensor", f"{name}({t.device.type} {rec['dtype']}{rec['shape']})", rec["frame"])
            return None
        return self._orig[name](**a)

    def _object(self, name: str, args, kwargs):
        a = self._bind(name, args, kwargs)
        info = self.group(a.get("group"))
        self._record(dict(op=name, group=info["id"], group_name=info["name"], group_size=len(info["ranks"])))
        if name == "all_gather_object":
            lst = a["object_list"]
            for i in range(len(lst)):
                lst[i] = a["obj"]
        elif name == "gather_object" and a.get("object_gather_list") is not None:
            lst = a["object_gather_list"]
            for i in range(len(lst)):
                lst[i] = a["obj"]
        elif name == "scatter_object_list" and a.get("scatter_object_input_list"):
            a["scatter_object_output_list"][0] = a["scatter_object_input_list"][0]
        return None

    def _save(self, state_dict, *, storage_writer=None, planner=None, process_group=None, **_):
        """DCP's save, planned on this rank and written nowhere."""
        planner.set_up_planner(state_dict, is_coordinator=True)
        local = planner.create_local_plan()
        plans, _metadata = planner.create_global_plan([local])
        final = planner.finish_plan(plans[0])
        nbytes = 0
        for item in final.items:
            td = getattr(item, "tensor_data", None)
            if td is not None:
                n = 1
                for s in td.chunk.sizes:
                    n *= int(s)
                nbytes += n * td.properties.dtype.itemsize
        self.play.checkpoint.append(dict(items=len(final.items), bytes=nbytes, section=self.play.section))
        return _metadata

    # ---------------------------------------------------------------- overlapped work

    def handle_kinds(self, event: str, handle) -> None:
        """Observer of the engine's overlapped collectives (parallel/collectives.py `Handle`): each call
        a handle covers is marked with the handle's kind (param_gather, grad_reduce, p2p)."""
        if event == "issue":
            for rec in _recs_of(handle.work):
                rec["handle"] = handle.kind

    # ---------------------------------------------------------------- install

    @contextlib.contextmanager
    def installed(self):
        patches = {"new_group": self._new_group, "batch_isend_irecv": self._batch}
        for name in COLLECTIVES:
            if hasattr(dist, name):
                patches[name] = lambda *a, _n=name, **k: self._collective(_n, a, k)
        for name in ("send", "recv"):
            patches[name] = lambda *a, _n=name, **k: self._p2p(_n, a, k)
        for name in OBJECT_COLLECTIVES:
            patches[name] = lambda *a, _n=name, **k: self._object(_n, a, k)
        for name, fn in patches.items():
            self._orig[name] = getattr(dist, name)
            setattr(dist, name, fn)
        orig_save = dcp.save
        dcp.save = self._save
        try:
            yield self
        finally:
            for name, fn in self._orig.items():
                setattr(dist, name, fn)
            dcp.save = orig_save


def _recs_of(work, depth: int = 0) -> list[dict]:
    """The call records a (possibly wrapped) work handle completes."""
    if work is None or depth > 4:
        return []
    if isinstance(work, _Work):
        return work._recs
    inner = work.__dict__.get("work") if hasattr(work, "__dict__") else None
    if inner is not None:
        return _recs_of(inner, depth + 1)
    many = work.__dict__.get("works") if hasattr(work, "__dict__") else None
    return [r for w in many or [] for r in _recs_of(w, depth + 1)]


def _label(info: dict) -> str:
    return f"a {info['name']} group ({'/'.join(sorted(info['devices']))}-only backend)"
