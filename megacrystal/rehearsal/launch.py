"""The configuration a rehearsal plays: the user's, with what a CPU cannot hold or afford changed, and said.

- `train.device: meta`; the (fake) process group is started by the rehearsal (`parallel.backend: auto`);
- micro-batches per step capped at 2·pp·vpp (the interleaved schedule's steady state needs pp·vpp in
  flight; twice that reaches it), i.e. `train.global_batch_size` = micro·dp·cap;
- each phase shortened to one step (the rehearsed steps run into as many phases; a phase whose range
  a later phase replays to what that range needs), so the data plan and the index builds cover only
  about the samples the rehearsal reads, for every phase;
- `train.eval_iters: 1`, no TensorBoard, no consolidated export, no `init_from`, no watchdog,
  `data.num_workers: 0`, the index cache in the rehearsal's work directory;
- data files and the tokenizer that are not on this machine replaced by stand-ins (standin.py).

Before that, the user's configuration is checked as a launch would: the field and grid rules for
the world, and, when the files are here, the full data plan (epochs, tokenizer, FIM tokens).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..atomic_io import atomic_write
from ..config import Config, ConfigError, load_config
from ..config.validation import validate_config
from . import standin


@dataclass
class Launch:
    cfg: Config
    world: int
    path: Path  # the rehearsed configuration (YAML)
    micro_batches: dict
    notes: list[str] = field(default_factory=list)
    stand_ins: dict = field(default_factory=dict)


def micro_batch_cap(pp: int, vpp: int) -> int:
    return 2 * pp * vpp


def _tokenizer(cfg: Config, workdir: Path, notes: list[str]):
    from ..tokenizer import load_tokenizer

    d = cfg.data
    if d.tokenizer_model and (os.path.exists(d.tokenizer_model)):
        return d.tokenizer_type, d.tokenizer_model, load_tokenizer(d.tokenizer_type, d.tokenizer_model)
    path = standin.tokenizer_path(workdir)
    if d.tokenizer_model:
        notes.append(f"tokenizer {d.tokenizer_model} not here: a byte-level stand-in with Crystal's special tokens")
    return "HuggingFaceTokenizer", path, load_tokenizer("HuggingFaceTokenizer", path)


def _phase_steps(phases, steps: int, gbs: int) -> list[int]:
    """One step per phase (the rehearsed steps run into as many phases; the last takes any more), and
    enough steps in a phase that a later phase replays for its range to hold two samples."""
    out = [1] * len(phases)
    out[-1] += max(0, steps - len(phases))
    index = {p.name: i for i, p in enumerate(phases)}
    for ph in phases:
        for e in ph.entries().values():
            r = e.replay
            if r is None or r.phase not in index:
                continue
            src = phases[index[r.phase]].entries()
            share = src[r.source].weight / sum(x.weight for x in src.values()) if r.source in src else 1.0
            need = 2.0 / max(share * (r.end - r.start), 1e-9)
            out[index[r.phase]] = max(out[index[r.phase]], math.ceil(need / gbs))
    return out


def prepare(cfg: Config, world: int, steps: int, workdir: Path) -> Launch:
    """Check the user's configuration for `world` ranks (ConfigError as a launch raises it) and write
    the rehearsed one."""
    validate_config(cfg, world)
    par, t, d = cfg.parallel, cfg.train, cfg.data
    dp = world // (par.tp * par.cp * par.pp)
    configured = t.global_batch_size // (t.micro_batch_size * dp)
    rehearsed = min(configured, micro_batch_cap(par.pp, par.vpp))
    notes: list[str] = []
    if rehearsed < configured:
        notes.append(
            f"micro-batches per step capped at {rehearsed} of {configured} (2·pp·vpp: the schedule's steady state)"
        )
    tok_type, tok_path, tok = _tokenizer(cfg, workdir, notes)
    files_here = all(not standin.missing(p) for s in d.sources.values() for p in s.prefixes)
    if files_here and tok_path == d.tokenizer_model:
        from ..data.plan import make_plan

        make_plan(cfg)  # the full run's data plan: raises ConfigError as `megacrystal train` would
    else:
        notes.append("the full run's data plan is not checked here (its files are not on this machine)")

    gbs = t.micro_batch_size * dp * rehearsed
    phase_steps = _phase_steps(d.phases, steps, gbs)
    samples = sum(phase_steps) * gbs
    prefixes = standin.stand_in_sources(cfg, tok, workdir, samples, seed=d.seed)
    replaced = {n: [p for p, q in zip(ps, d.sources[n].prefixes, strict=True) if p != q] for n, ps in prefixes.items()}
    replaced = {n: v for n, v in replaced.items() if v}
    if replaced:
        notes.append(f"{sum(map(len, replaced.values()))} data file(s) not here: stand-ins at the real sequence length")

    data = copy.deepcopy(cfg.to_dict())
    dd, tt = data["data"], data["train"]
    for name, ps in prefixes.items():
        dd["sources"][name]["prefixes"] = ps
    dd.update(tokenizer_type=tok_type, tokenizer_model=tok_path, cache_dir=str(workdir / "index_cache"))
    dd.update(num_workers=0, backend="torch", pin_memory=False)
    for ph, n in zip(dd["phases"], phase_steps, strict=True):
        ph.update(steps=n, tokens=None)
    tt.update(global_batch_size=gbs, max_steps=steps, device="meta", save_consolidated=False, init_from=None)
    tt.update(step_timeout_s=0.0, resume="auto", out_dir=str(workdir / "out"))
    if tt.get("eval_interval"):
        tt["eval_iters"] = 1
    data["log"].update(tensorboard=False, level="WARNING")
    if data["parallel"].get("backend", "auto") != "auto":  # the rehearsal starts its own (fake) group
        notes.append(f"parallel.backend {data['parallel']['backend']} played as the meta-only fake backend")
        data["parallel"]["backend"] = "auto"
    sig = standin.signature(data)
    path = workdir / f"rehearsal-{sig}.yaml"
    if not path.is_file():  # another rehearsal may write the same one at the same time
        atomic_write(path, yaml.safe_dump(data, sort_keys=False).encode())
    try:
        load_config(str(path))
    except ConfigError as e:  # a rehearsal-made configuration the rules refuse: a bug here, said as such
        raise RuntimeError(f"rehearsal: the rehearsed configuration is invalid ({e})") from None
    return Launch(
        cfg=cfg,
        world=world,
        path=path,
        micro_batches=dict(configured=configured, rehearsed=rehearsed, cap=micro_batch_cap(par.pp, par.vpp)),
        notes=notes,
        stand_ins=dict(files=replaced, tokenizer=tok_path if tok_path != d.tokenizer_model else None),
    )
