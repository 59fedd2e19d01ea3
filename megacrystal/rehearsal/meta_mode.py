"""The dispatch mode every op of a play runs under: fast meta ops, memory, FLOPs and host reads.

- Fast meta: an aten op whose outputs are new tensors is run once per (op, shapes, strides, dtypes,
  scalars); later calls build the outputs from the remembered metadata (`empty_strided`), skipping
  torch's Python meta kernels. An in-place op seen before returns its mutated argument.
- Memory: every new meta storage is registered with the play's `MemoryTracker`.
- FLOPs: matmuls by torch's FLOP formulas (`torch.utils.flop_counter`), attention kernels (the
  flash-shaped stand-in, SDPA's aten kernels of ring attention) by formula, causal blocks half; every other op
  counted as one FLOP per output element (and its bytes in and out), per section of the play.
- Host reads: `.item()`, `bool()`, a copy to the host, and ops whose output shape depends on values
  (`nonzero`, boolean-mask indexing) have no meta result; each is a finding, answered with a
  stand-in (0, or "every element selected") so the play goes on to find the next one.
- Sections: the product's profiler ranges (`megacrystal.train_step`, `.eval`, `.checkpoint`) mark them.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..model.attention_meta import block_flops
from ..model.attention_meta import flops as attention_flops

try:
    from torch.utils.flop_counter import flop_registry
except ImportError:  # pragma: no cover - very old torch
    flop_registry = {}

aten = torch.ops.aten
T = torch.Tensor
_SIMPLE = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)
MATMUL = {"mm", "addmm", "bmm", "baddbmm", "_scaled_mm"}
SDPA = {
    f"_scaled_dot_product_{k}{s}"
    for k in ("flash_attention", "efficient_attention", "cudnn_attention", "flash_attention_for_cpu")
    for s in ("", "_backward")
}
HOST_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}
DATA_DEPENDENT = {"nonzero", "masked_select", "unique_dim", "_unique2", "unique_consecutive", "nonzero_static"}
CALL, FRESH, INPLACE = 0, 1, 2


class _Unhashable(Exception):
    pass


def _key(a, flags: list):
    if isinstance(a, T):
        meta = a.is_meta
        flags[0 if meta else 1] = True
        return (a.shape, a.stride(), a.dtype, meta)
    if isinstance(a, _SIMPLE):
        return a
    if isinstance(a, (list, tuple)):
        out = []
        for x in a:
            out.append(_key(x, flags))
        return tuple(out)
    raise _Unhashable


INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}


def _describe(func) -> tuple:
    """(kind, aliased argument for each return) of an op, from its schema."""
    s = func._schema
    name = func.__name__.split(".")[0]
    track = func.namespace != "aten" or s.is_mutable  # may make or resize a storage outside the fast path
    if func in HOST_READS or name in DATA_DEPENDENT or name in INDEXING:
        return CALL, (), True, True
    if func.namespace != "aten" or name.startswith(("resize", "set_", "as_strided", "_resize")):
        return CALL, (), False, track
    returns_alias = [r.alias_info for r in s.returns]
    if not s.is_mutable:
        return (CALL, (), False, False) if any(returns_alias) else (FRESH, (), False, False)
    if s.overload_name == "out" or any(a is None for a in returns_alias):
        return CALL, (), False, True
    sets = {}
    for i, a in enumerate(s.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            for name in a.alias_info.before_set:
                sets[name] = (i, a.name)
    targets = []
    for r in returns_alias:
        hit = [sets[n] for n in r.before_set if n in sets]
        if not hit:
            return CALL, (), False, True
        targets.append(hit[0])
    return INPLACE, tuple(targets), False, True


def _pick(args, kwargs, target):
    i, name = target
    return args[i] if i < len(args) else kwargs[name]


def _flat_tensors(x, out: list) -> list:
    if isinstance(x, T):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _flat_tensors(v, out)
    return out


class MetaMode(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls):  # no torch.compile in a play: skip torch's per-call dynamo guard
        return False

    def __init__(self, play):
        super().__init__()
        self.play = play
        self.memory = play.memory
        self._kinds: dict = {}
        self._cache: dict = {}
        self._ranges: list[str] = []  # open profiler ranges (they nest)

    # ---------------------------------------------------------------- dispatch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.play.ops[self.play.section] += 1  # every op the step dispatches: a CPU's host cost is per op
        info = self._kinds.get(func)
        if info is None:
            info = self._kinds[func] = _describe(func)
        kind = info[0]
        if kind == CALL:
            if not (info[2] or info[3]) and func.namespace == "aten":
                return func(*args, **kwargs)  # a view: no new storage, nothing to count
            return self._call(func, args, kwargs, info[2], info[3])
        flags = [False, False]
        try:
            key = (func, _key(args, flags), _key(tuple(kwargs.items()), flags) if kwargs else None)
        except _Unhashable:
            return self._call(func, args, kwargs)
        if flags[1]:  # a host op, or a copy between the host and the device
            return self._host_or_transfer(func, args, kwargs, flags)
        if not flags[0]:  # no tensor argument: a factory, on the device when its `device` says so
            dev = kwargs.get("device")
            if dev is None or torch.device(dev).type != "meta":
                return func(*args, **kwargs)
        hit = self._cache.get(key)
        if hit is None:
            out = func(*args, **kwargs)
            if kind == FRESH and _aliases_input(out, args):  # a view the schema does not say is one
                self._kinds[func] = (CALL, (), False, False)
                return out
            hit = self._remember(key, func, kind, info, args, kwargs, out)
            if hit is None:  # outputs that are not all tensors (flash attention's): counted, not cached
                cls, n, moved = _flops(func, args, kwargs, out)
                self.play.add_flops(cls, n, moved)
                for t in _flat_tensors(out, []):
                    if t.device.type == "meta":
                        self.memory.track(t)
                return out
            self._count(hit)
            if kind == FRESH:
                for t in _flat_tensors(out, []):
                    self.memory.track(t)
            return out
        self._count(hit)
        if kind == INPLACE:
            targets = info[1]
            if not targets:
                return None
            outs = [_pick(args, kwargs, t) for t in targets]
            return outs[0] if len(outs) == 1 else tuple(outs)
        return self._build(hit[3])

    def _build(self, desc):
        if desc[0] == "t":
            t = torch.empty_strided(desc[1], desc[2], dtype=desc[3], device="meta")
            self.memory.track(t)
            return t
        return desc[1](self._build(d) for d in desc[2])

    def _remember(self, key, func, kind, info, args, kwargs, out):
        desc = _shape_of(out) if kind == FRESH else ("inplace",)
        if desc is None:
            return None
        flops = _flops(func, args, kwargs, out)
        hit = (func, flops[0], flops[1], desc, flops[2])
        self._cache[key] = hit
        return hit

    def _count(self, hit) -> None:
        self.play.add_flops(hit[1], hit[2], hit[4])

    # ---------------------------------------------------------------- ops the fast path does not take

    def _call(self, func, args, kwargs, special: bool, track: bool):
        if func.namespace == "profiler":
            return self._range(func, args, kwargs)
        if func.namespace == "megacrystal" and func.__name__.startswith("attention_meta"):
            backward = "backward" in func.__name__
            q, k = (args[1], args[2]) if backward else (args[0], args[1])
            self.play.add_flops("attention", attention_flops(q.shape, k.shape, backward), 0)
        on_meta = any(t.device.type == "meta" for t in _flat_tensors(args, []))
        if on_meta and special:
            if func in HOST_READS:
                return self.play.host_read(func.__name__, args[0])
            if func.__name__.split(".")[0] in DATA_DEPENDENT or _bool_index(func, args):
                return self._data_dependent(func, args, kwargs)
        out = func(*args, **kwargs)
        if on_meta:
            for t in _flat_tensors(out, _flat_tensors(args, [])):
                if t.device.type == "meta":
                    self.memory.track(t)
        return out

    def _host_or_transfer(self, func, args, kwargs, flags):
        """Ops with a host tensor: the data pipeline's own work, or a copy to or from the device."""
        if not flags[0]:
            out = func(*args, **kwargs)  # host tensors only (a factory's `device` may still say meta)
            for t in _flat_tensors(out, []):
                if t.device.type == "meta":
                    self.memory.track(t)
            return out
        if func is aten.copy_.default and args[0].device.type != "meta":
            self.play.device_to_host(args[1])  # a staged checkpoint copy: nothing to copy
            return args[0]
        if func is aten._to_copy.default and args[0].device.type == "meta":
            dev = kwargs.get("device")
            if dev is not None and torch.device(dev).type != "meta":
                self.play.device_to_host(args[0])
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype, device=dev)
        host = [t for t in _flat_tensors([args, list(kwargs.values())], []) if t.device.type == "cpu" and t.dim()]
        if host and self.play.section.startswith("step"):  # on a GPU: a copy to the device (and a sync) per call
            self.play.host_operand(func.__name__, host[0])
        out = func(*args, **kwargs)
        for t in _flat_tensors(out, []):
            if t.device.type == "meta":
                self.memory.track(t)
        return out

    def _data_dependent(self, func, args, kwargs):
        name = func.__name__.split(".")[0]
        self.play.data_dependent(name)
        if name.startswith("nonzero"):
            x = args[0]
            return torch.empty((x.numel(), x.dim()), dtype=torch.long, device="meta")
        if name == "masked_select":
            return torch.empty((args[1].numel(),), dtype=args[0].dtype, device="meta")
        if name.startswith("unique") or name == "_unique2":
            return func(*args, **kwargs)  # raises: no stand-in shape
        # boolean-mask indexing: every element of the mask counts as selected
        indices = [_as_long(i) for i in args[1]]
        return func(args[0], indices, *args[2:], **kwargs)

    def _range(self, func, args, kwargs):
        out = func(*args, **kwargs)
        if func.__name__.startswith("_record_function_enter"):
            name = args[0] if args and isinstance(args[0], str) else ""
            self._ranges.append(name)
            if name.startswith("megacrystal."):
                self.play.enter(name)
        elif func.__name__.startswith("_record_function_exit") and self._ranges:
            name = self._ranges.pop()
            if name.startswith("megacrystal."):
                self.play.exit(name)
        return out


def _shape_of(out):
    if isinstance(out, T):
        return ("t", out.shape, out.stride(), out.dtype)
    if isinstance(out, (tuple, list)) and all(isinstance(o, T) for o in out):
        return ("seq", type(out), tuple(_shape_of(o) for o in out))
    return None


def _flops(func, args, kwargs, out) -> tuple[str, int, int]:
    """(op class, FLOPs, bytes in + out) of one call."""
    name = func.__name__.split(".")[0]
    if name in SDPA:
        return "attention", _sdpa_flops(func, name, args, kwargs), 0
    formula = flop_registry.get(func.overloadpacket)
    if formula is not None:
        try:
            n = int(formula(*args, **kwargs, out_val=out))
        except Exception:  # a formula that does not take these arguments: count nothing for it
            n = 0
        return ("matmul" if name in MATMUL else "attention"), n, 0
    outs = _flat_tensors(out, [])
    moved = sum(t.numel() * t.element_size() for t in outs + _flat_tensors(args, []))
    return "other", sum(t.numel() for t in outs), moved


def _sdpa_flops(func, name: str, args, kwargs) -> int:
    """An SDPA aten kernel (ring attention's blocks): its causal flag read from the call, so a causal
    block counts half (torch's formula counts every block whole) and a backward 2.5 times a forward."""
    bound = dict(zip((a.name for a in func._schema.arguments), args, strict=False))
    bound.update(kwargs)
    q, k = bound["query"], bound["key"]  # [b, h, L, d]
    b, hq, lq, d = q.shape
    return block_flops(b, hq, lq, k.shape[2], d, bool(bound.get("is_causal")), name.endswith("_backward"))


def _aliases_input(out, args) -> bool:
    outs = _flat_tensors(out, [])
    if not outs:
        return False
    ins = {id(t.untyped_storage()) for t in _flat_tensors(args, [])}
    return any(id(o.untyped_storage()) in ins for o in outs)


def _bool_index(func, args) -> bool:
    if func.__name__.split(".")[0] not in INDEXING or len(args) < 2:
        return False
    return any(isinstance(i, T) and i.dtype == torch.bool for i in (args[1] or ()))


def _as_long(i):
    if isinstance(i, T) and i.dtype == torch.bool:
        return torch.arange(i.numel(), device=i.device).reshape(i.shape)  # "all selected" (same count)
    return i
