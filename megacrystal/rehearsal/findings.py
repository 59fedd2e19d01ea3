"""A finding: one defect a rehearsal found, on one rank, at one call and frame."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# check name -> the one-line title printed before the call (also the JSON's `check` field)
CHECKS = {
    "host_tensor": "host tensor in a collective of a device group",
    "host_read": "host read of a device value outside parallel.host.to_host",
    "data_dependent": "data-dependent shape in the step (a device sync on CUDA, no meta shape)",
    "reads_per_step": "more than two host reads in one step",
    "collective_order": "group members issue different collectives (a hang on a cluster)",
    "p2p": "pipeline send without its matching receive (a hang on a cluster)",
    "memory": "does not fit the GPU",
    "crash": "the launch raises",
    "config": "the configuration is refused",
}


@dataclass
class Finding:
    check: str
    rank: int
    call: str
    frame: str
    detail: str = ""

    def line(self, others: int = 0) -> str:
        ranks = f"rank {self.rank}" + (f" (and {others} other played rank{'s' * (others > 1)})" if others else "")
        tail = f" [{self.detail}]" if self.detail else ""
        return f"{ranks}: {CHECKS.get(self.check, self.check)}: {self.call} at {self.frame}{tail}"

    def key(self) -> tuple:
        return (self.check, self.call, self.frame, self.detail)

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(findings: list[Finding]) -> list[str]:
    """One line per distinct (check, call, frame): its first rank, and how many other ranks had it."""
    groups: dict[tuple, list[Finding]] = {}
    for f in findings:
        groups.setdefault(f.key(), []).append(f)
    return [fs[0].line(len({x.rank for x in fs}) - 1) for fs in groups.values()]
