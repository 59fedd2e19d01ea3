"""The study file (examples/study.yaml):

base: demo.yaml                 # run config every variant starts from (relative to this file)
out_dir: runs/study             # runs/<variant>/seed<N>/, configs/, compare/, study.json
variants: [crystal, mixed, sequential, reversed]
seeds: [1, 2, 3]                # train.seed and data.seed of each run
overrides: [train.eval_interval=20]   # dotted overrides of the base config, for every run
eval_args: [--fim-documents, "64"]    # extra `megacrystal eval` arguments
jobs: auto                      # parallel runs (auto: usable cores // threads_per_job)
threads_per_job: 1              # torch threads of each run
job_timeout_s: 3600             # a run (train + eval) taking longer is stopped and reported
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..config.loading import apply_overrides, read_yaml_mapping
from .variants import VARIANTS


@dataclass
class StudySpec:
    base: str
    out_dir: str = "runs/study"
    variants: list = field(default_factory=lambda: list(VARIANTS))
    seeds: list = field(default_factory=lambda: [1, 2, 3])
    overrides: list = field(default_factory=list)
    eval_args: list = field(default_factory=list)
    jobs: int | str = "auto"
    threads_per_job: int = 1
    job_timeout_s: float = 3600.0
    launcher: list = field(default_factory=list)
    source_file: str | None = None

    def num_jobs(self) -> int:
        if self.jobs != "auto":
            return int(self.jobs)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // max(1, self.threads_per_job))


def read_spec(path: str, overrides: list[str] | None = None) -> StudySpec:

    p = Path(path)
    data = read_yaml_mapping(p, "study")
    data = apply_overrides(data, list(overrides or []))
    known = set(StudySpec.__dataclass_fields__) - {"source_file"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field {unknown[0]!r} (fields: {sorted(known)})")
    if "base" not in data:
        raise ConfigError(f"{path}: base: expected the run config the variants start from")
    for k in ("variants", "seeds", "overrides", "eval_args", "launcher"):
        if k in data and not isinstance(data[k], list):
            raise ConfigError(f"{path}: {k}: expected a list, got {data[k]!r}")
    bad = [v for v in data.get("variants", VARIANTS) if v not in VARIANTS]
    if bad:
        raise ConfigError(f"{path}: variants: {bad[0]!r} is not one of {list(VARIANTS)}")
    if not data.get("seeds", [1]) or not all(isinstance(s, int) for s in data.get("seeds", [1])):
        raise ConfigError(f"{path}: seeds: expected a non-empty list of integers")
    spec = StudySpec(**data, source_file=str(p))
    spec.base = str((p.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base))
    spec.overrides = [str(o) for o in spec.overrides]
    spec.eval_args = [str(o) for o in spec.eval_args]
    spec.launcher = [str(o) for o in spec.launcher]
    if spec.jobs != "auto" and (not isinstance(spec.jobs, int) or spec.jobs < 1):
        raise ConfigError(f"{path}: jobs: expected 'auto' or a positive integer, got {spec.jobs!r}")
    return spec
