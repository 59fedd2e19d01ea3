"""What one played rank records: sections, FLOPs, host reads, findings, memory, collectives.

Sections follow the product's profiler ranges: `setup` until the first `megacrystal.train_step`;
`step N` from the N-th train step until the next one (the loop's own per-step work after the
engine's step belongs to it); `eval` and `checkpoint` while those ranges are open. Memory also keeps
the peak of `step N schedule` (the `megacrystal.schedule` range: the forwards and backwards), a part
of `step N`.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import torch

from .findings import Finding
from .frames import where
from .memory import MemoryTracker

STEP_RANGE, EVAL_RANGE, SAVE_RANGE = "megacrystal.train_step", "megacrystal.eval", "megacrystal.checkpoint"
SCHEDULE_RANGE = "megacrystal.schedule"  # the forwards and backwards of a step: memory section "step N schedule"
MAX_READS_PER_STEP = 2


class PlayState:
    def __init__(self, rank: int, coords: dict):
        self.rank, self.coords = rank, dict(coords)
        self.memory = MemoryTracker()
        self.section = "setup"
        self._stack: list[str] = []
        self.steps = 0
        self.flops: dict = defaultdict(lambda: defaultdict(int))  # section -> class -> FLOPs
        self.other_bytes: dict = defaultdict(int)  # section -> bytes in + out of non-matmul ops
        self.ops: dict = defaultdict(int)  # section -> ops dispatched (views and in-place ops included)
        self.host_reads: dict = defaultdict(list)  # section -> [(what, frame)]
        self.d2h_bytes: dict = defaultdict(int)
        self.findings: list[Finding] = []
        self._seen: set = set()
        self.engine = None
        self.engine_facts: dict = {}
        self.collectives: list[dict] = []  # filled by comms.Comms
        self.p2p: list[dict] = []
        self.checkpoint: list[dict] = []
        self.order = 0  # event counter: collective issues and waits, in program order
        self.compute = {"matmul": 0, "attention": 0}  # FLOPs dispatched so far: where issues and waits fall
        self.timing: dict[str, float] = {}  # section -> seconds of this play spent in it
        self._since = time.perf_counter()

    # ---------------------------------------------------------------- sections

    def _set(self, section: str) -> None:
        now = time.perf_counter()
        self.timing[self.section] = self.timing.get(self.section, 0.0) + now - self._since
        self._since = now
        self.section = section
        self.memory.section = section

    def enter(self, name: str) -> None:
        if name == STEP_RANGE and not self._stack:
            self.steps += 1
            self._set(f"step {self.steps}")
            if self.engine is None:
                self.engine = _engine_from_frames()
        elif name in (EVAL_RANGE, SAVE_RANGE):
            self._stack.append(self.section)
            self._set("eval" if name == EVAL_RANGE else "checkpoint")
        elif name == SCHEDULE_RANGE and self.section.startswith("step"):
            self.memory.subsection = f"{self.section} schedule"  # memory only, inside the step's own section

    def exit(self, name: str) -> None:
        if name == SCHEDULE_RANGE:
            self.memory.subsection = None
            return
        if name == STEP_RANGE and not self._stack and self.engine is not None:
            self.memory.mark_engine(self.engine)
            if not self.engine_facts:
                self.engine_facts = engine_facts(self.engine)
        elif name in (EVAL_RANGE, SAVE_RANGE) and self._stack:
            self._set(self._stack.pop())

    # ---------------------------------------------------------------- what the dispatch mode reports

    def add_flops(self, cls: str, n: int, moved: int) -> None:
        self.flops[self.section][cls] += n
        if cls in self.compute:
            self.compute[cls] += n
        if moved:
            self.other_bytes[self.section] += moved

    def finding(self, check: str, call: str, frame: str | None = None, detail: str = "") -> None:
        frame = frame or where(skip=2)
        key = (check, call, frame, detail)
        if key not in self._seen:  # the same defect on every step or micro-batch is one finding
            self._seen.add(key)
            self.findings.append(Finding(check, self.rank, call, frame, detail))

    def host_read(self, op: str, t: torch.Tensor):
        """A read of a meta value outside the named host-read function: a finding, and a stand-in 0."""
        self.finding("host_read", f"{op}({_describe(t)})", where(skip=2))
        self.host_reads[self.section].append((op, where(skip=2)))
        if t.dtype == torch.bool:
            return False
        return 0 if not t.dtype.is_floating_point else 0.0

    def host_operand(self, op: str, t: torch.Tensor) -> None:
        """A host tensor (not a scalar) mixed into a device op in the step: position ids, document
        boundaries or masks left on the host are copied to the GPU at every use."""
        self.finding("host_tensor", f"{op}({_describe(t)}) with device operands", where(skip=3))

    def data_dependent(self, op: str) -> None:
        self.finding("data_dependent", op, where(skip=3))

    def device_to_host(self, t: torch.Tensor) -> None:
        self.d2h_bytes[self.section] += t.numel() * t.element_size()
        if self.section.startswith("step"):
            self.finding("host_read", f"copy to the host ({_describe(t)})", where(skip=3))

    def stand_in(self, what: str, t: torch.Tensor) -> list[float]:
        """The named host read (parallel.host.to_host): counted, answered with zeros (valid, no stop,
        finite, nothing to clip) since a meta tensor holds no value."""
        frame = where(skip=3)
        self.host_reads[self.section].append((what, frame))
        reads = self.host_reads[self.section]
        if self.section.startswith("step") and len(reads) > MAX_READS_PER_STEP:
            self.finding(
                "reads_per_step",
                f"read {len(reads)} ({what})",
                frame,
                "earlier: " + "; ".join(f"{w} at {f.split(' <- ')[0]}" for w, f in reads[:-1]),
            )
        return [0.0] * t.numel()

    def cursor(self) -> list[int]:
        """The matmul and attention FLOPs dispatched so far: a collective issued at one cursor and
        waited at another has the device's compute between them to hide behind."""
        return [self.compute["matmul"], self.compute["attention"]]

    def next_order(self) -> int:
        self.order += 1
        return self.order


def _describe(t: torch.Tensor) -> str:
    return f"{t.device.type} {str(t.dtype).replace('torch.', '')}{list(t.shape)}"


def _engine_from_frames():
    """The Engine whose train_step opened the range (the caller's `self`)."""
    f = sys._getframe(1)
    while f is not None:
        obj = f.f_locals.get("self") if f.f_code.co_name == "train_step" else None
        if obj is not None and type(obj).__name__ == "Engine" and hasattr(obj, "chunks"):
            return obj
        f = f.f_back
    return None


def engine_facts(engine) -> dict:
    """Element counts and dtypes of the state a rank keeps, for the exact-bytes reference."""
    params = [p for m in engine.chunks for p in m.parameters()]
    out = dict(
        parameters=sum(p.numel() for p in params),
        parameter_tensors=len(params),
        parameter_dtype=str(params[0].dtype).replace("torch.", "") if params else None,
    )
    buf = engine.buffers
    if buf is not None:
        out.update(grad_buffer=buf.grad_buffer.numel(), grad_dtype=str(buf.grad_dtype).replace("torch.", ""))
        out["param_buffer"] = buf.param_buffer.numel() if buf.param_buffer is not None else 0
    return out
