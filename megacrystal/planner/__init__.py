"""`megacrystal plan`: a step-time simulator of this engine for choosing a layout (docs/planner.md).

shapes    the model, a layout, the engine features (overlaps) a step has
hardware  a device, node and network (hardware_table: the entries and their sources)
costs     the cost record of one distinct layer shape, and the formula source (the rehearsal's source,
          `megacrystal plan`'s default, is rehearsal/plan_costs.py: the rehearsal sits above the planner)
compute   operation times from FLOPs, bytes and the hardware's efficiencies
comm      collective and p2p times (alpha-beta per link class, real rank placement)
pipeline_sim  the engine's schedules replayed and simulated event by event
memory    memory per device from the records and the schedule
compose   one layout's step; search: every valid layout, ranked; command: the CLI
"""

from __future__ import annotations


def plan(cfg, gpus: int, gpu: str = "h100", source=None) -> list[dict]:
    """Every valid layout of `cfg` on `gpus` devices of kind `gpu`, best first, as plain rows:
    tp pp vpp dp mbs ... step_s (simulated, or a lower bound where `exact` is False), tokens_per_s,
    fits, memory_gb and its parts (parts_gb), memory_source, bubble, mfu. `source`: a cost source
    (default the formula; `megacrystal.rehearsal.plan_costs.RehearsalCosts(cfg)` measures memory,
    FLOPs and collective bytes by rehearsing each layer shape, as `megacrystal plan` does)."""
    from . import hardware
    from .command import row
    from .costs import FORMULA
    from .search import plan_layouts

    plans, _ = plan_layouts(cfg, gpus, hardware.get(gpu), source=source or FORMULA)
    out = []
    for p in plans:
        r = row(p)
        r["parts_gb"] = r.pop("memory_parts_gb")
        r["tokens_per_s"] = p.tokens_per_step / p.step_s
        out.append(r)
    return out
