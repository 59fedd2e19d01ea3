"""A phase's blend entries: which source each reads, at which FIM rate, or which earlier range it replays.

A blend entry is either a source of the phase (its key is the source's name) or a replay (its key
is a name of its own) of a range of an earlier phase's samples of a source. FIM is a property of
an entry: its own `fim_rate` / `fim_spm_rate` when given, else the phase's when the source opts in
(`fim: true` on the source), else none at all. A replay takes the FIM rates of the entry it replays
and, at sample time, its FIM draws too, so it yields the very tokens that phase produced.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError, PhaseConfig
from ..log import get_logger

log = get_logger("megacrystal.data.entries")


@dataclass
class ReplayPlan:
    phase: int  # index of the replayed phase
    phase_name: str
    start: float  # fractions of that phase's samples of the source
    end: float


@dataclass
class EntryPlan:
    name: str  # blend key: the source's name, or the replay's own name
    source: str  # whose documents it reads
    fim_rate: float  # effective, for this entry in this phase
    fim_spm_rate: float
    replay: ReplayPlan | None = None

    @property
    def fim(self) -> bool:
        return self.fim_rate > 0


def resolve_entries(
    i: int, ph: PhaseConfig, sources: dict, earlier: list, source_configs: dict, where: str
) -> tuple[list[EntryPlan], list[float]]:
    """Active entries of phase i (weight > 0, data present) in blend order, and their weights.

    `earlier`: the PhasePlans of phases 0..i-1; `sources`: {name: SourcePlan}.
    An empty optional source is left out (logged); a replay of it is left out with it.
    """
    active, weights = [], []
    for k, e in ph.entries().items():
        if e.weight <= 0:
            continue
        if e.replay is not None:
            entry = _replay_entry(k, e, earlier, where, i, ph)
        else:
            if sources[k].empty:
                if not sources[k].optional:
                    raise ConfigError(
                        f"{where}data.phases[{i}] ({ph.name}).blend.{k}: weight {e.weight} but source {k!r} has no "
                        f"training tokens (prefixes {source_configs[k].prefixes}); give it weight 0, add data, or "
                        f"mark it `optional: true` to leave it out of the blend"
                    )
                log.info(
                    f"phase {ph.name}: optional source {k} is empty; its weight {e.weight} is left out of the blend"
                )
                continue
            rate = e.fim_rate if e.fim_rate is not None else (ph.fim_rate if source_configs[k].fim else 0.0)
            spm = e.fim_spm_rate if e.fim_spm_rate is not None else ph.fim_spm_rate
            entry = EntryPlan(k, k, float(rate), float(spm))
        if entry is None:
            continue
        active.append(entry)
        weights.append(e.weight)
    return active, weights


def _replay_entry(k, e, earlier, where, i, ph) -> EntryPlan | None:
    r = e.replay
    src_phase = next(p for p in earlier if p.name == r.phase)
    replayed = next((x for x in src_phase.entries if x.name == r.source and x.replay is None), None)
    if replayed is None:  # validation saw it with weight > 0: it is an empty optional source
        log.info(f"phase {ph.name}: {k} replays {r.source} of {r.phase}, left out of that phase; left out too")
        return None
    j = src_phase.entries.index(replayed)
    expected = src_phase.weights[j] * src_phase.num_samples * (r.end - r.start)
    if expected < 1:
        raise ConfigError(
            f"{where}data.phases[{i}] ({ph.name}).blend.{k}.replay: the range {r.start}..{r.end} of phase "
            f"{r.phase}'s ~{src_phase.weights[j] * src_phase.num_samples:.0f} samples of {r.source} is empty"
        )
    return EntryPlan(
        k,
        r.source,
        replayed.fim_rate,
        replayed.fim_spm_rate,
        ReplayPlan(src_phase.index, src_phase.name, float(r.start), float(r.end)),
    )


def replay_range(start: float, end: float, count: int) -> tuple[int, int]:
    """[a, b) of the replayed phase's `count` samples of the source for fractions start..end."""
    a = int(start * count)
    b = count if end >= 1.0 else int(end * count)
    return a, max(b, a)
