"""Device memory of one played rank, counted per storage on the meta device.

Every storage a meta op creates is registered with its size (rounded up to the CUDA caching
allocator's 512-byte blocks) and released when Python frees it (a weakref on the storage). The
running total gives the peak; the storages alive at the peak are then split by what they are:

    weights        parameter storages (and the contiguous parameter buffer they view)
    grads          the fp32 main-gradient buffer (and any other `main_grad`)
    optimizer      master weights and Adam moments (the optimizer's state dict)
    activations    tensors autograd saved for the backward
    communication  tensors handed to a collective or a pipeline transfer (not otherwise one of the above)
    temporaries    everything else alive at that moment

Roles are marked by identity (`mark`) whenever one is learnt; a storage keeps the first role in the
order above. The peak of each section (setup, step N, eval, checkpoint) is kept too, and of the part
of a step that runs the schedule (`step N schedule`: forwards and backwards).
"""

from __future__ import annotations

import weakref

import torch

ROLES = ("weights", "grads", "optimizer", "activations", "communication", "temporaries")
_RANK = {r: i for i, r in enumerate(ROLES)}
BLOCK = 512


def _rounded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK if n else 0


class MemoryTracker:
    def __init__(self):
        self._ids: dict[int, int] = {}  # id(storage object) -> storage number
        self._refs: dict[int, weakref.ref] = {}
        self.size: dict[int, int] = {}  # storage number -> bytes (rounded)
        self.role: dict[int, str] = {}
        self.events: list[tuple[int, int]] = []  # (storage number, +bytes / -bytes)
        self.current = 0
        self.peak = 0
        self.peak_at = 0  # number of events at the peak
        self.section_peaks: dict[str, tuple[int, int]] = {}  # section -> (bytes, events at its peak)
        self.section = "setup"
        self.subsection: str | None = None  # a part of the section whose peak is kept too ("step N schedule")
        self._next = 0

    # ---------------------------------------------------------------- allocations

    def _sid(self, st) -> int | None:
        return self._ids.get(id(st))

    def track(self, t: torch.Tensor) -> None:
        """Register `t`'s storage if it is new (a meta op made it)."""
        st = t.untyped_storage()
        key = id(st)
        sid = self._ids.get(key)
        n = _rounded(st.nbytes())
        if sid is not None:
            if n != self.size[sid]:  # resized in place
                self._add(sid, n - self.size[sid])
                self.size[sid] = n
            return
        sid = self._next
        self._next += 1
        self._ids[key] = sid
        self._refs[key] = weakref.ref(st, lambda _r, key=key, sid=sid: self._free(key, sid))
        self.size[sid] = n
        self._add(sid, n)

    def _free(self, key: int, sid: int) -> None:
        if self._ids.get(key) == sid:
            del self._ids[key]
            del self._refs[key]
        self._add(sid, -self.size[sid])

    def _add(self, sid: int, delta: int) -> None:
        self.events.append((sid, delta))
        self.current += delta
        if self.current > self.peak:
            self.peak, self.peak_at = self.current, len(self.events)
        for sec in (self.section, self.subsection):
            if sec is None:
                continue
            best = self.section_peaks.get(sec)
            if best is None or self.current > best[0]:
                self.section_peaks[sec] = (self.current, len(self.events))

    # ---------------------------------------------------------------- roles

    def mark(self, t, role: str) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type != "meta":
            return
        sid = self._sid(t.untyped_storage())
        if sid is None:
            return
        old = self.role.get(sid)
        if old is None or _RANK[role] < _RANK[old]:
            self.role[sid] = role

    def mark_engine(self, engine) -> None:
        """Weights, main grads and optimizer state of a live engine, by identity."""
        for m in engine.chunks:
            for p in m.parameters():
                self.mark(p, "weights")
                self.mark(getattr(p, "main_grad", None), "grads")
        buf = engine.buffers
        if buf is not None:
            self.mark(buf.param_buffer, "weights")
            self.mark(buf.grad_buffer, "grads")
        if engine.optimizer is not None:
            for t in _tensors(engine.optimizer.state_dict()):
                self.mark(t, "optimizer")

    # ---------------------------------------------------------------- results

    def breakdown(self, at: int) -> dict[str, int]:
        """Bytes alive after the first `at` events, by role."""
        alive: dict[int, int] = {}
        for sid, delta in self.events[:at]:
            if delta > 0:
                alive[sid] = alive.get(sid, 0) + delta
            else:
                left = alive.get(sid, 0) + delta
                if left > 0:
                    alive[sid] = left
                else:
                    alive.pop(sid, None)
        out = dict.fromkeys(ROLES, 0)
        for sid, n in alive.items():
            out[self.role.get(sid, "temporaries")] += n
        return out

    def peak_of(self, role: str) -> int:
        """The most bytes of one role alive at any moment (activations peak inside the step, before the
        optimizer's peak; the breakdown at the overall peak may hold none)."""
        cur = best = 0
        for sid, delta in self.events:
            if self.role.get(sid, "temporaries") == role:
                cur += delta
                best = max(best, cur)
        return best

    def summary(self) -> dict:
        return dict(
            peak_activations=self.peak_of("activations"),
            peak_bytes=self.peak,
            peak_breakdown=self.breakdown(self.peak_at),
            peak_section=self._section_of_peak(),
            sections={s: dict(peak_bytes=b, breakdown=self.breakdown(at)) for s, (b, at) in self.section_peaks.items()},
        )

    def _section_of_peak(self) -> str:
        for s, (b, at) in self.section_peaks.items():
            if at == self.peak_at and b == self.peak and not s.endswith(" schedule"):
                return s
        return self.section


def _tensors(obj, out: list | None = None) -> list:
    out = [] if out is None else out
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _tensors(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _tensors(v, out)
    return out
