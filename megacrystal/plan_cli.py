"""`megacrystal plan`: the planner's command (planner/command.py) with the rehearsal's cost source as its
default (rehearsal/plan_costs.py: each layer shape played on meta once and cached) and the formula as the
fallback (`--cost-source formula`). A module of its own because it sits above both packages: the
planner imports nothing of the training code, and the rehearsal plays it.
"""

from __future__ import annotations


def main(argv=None) -> int:
    from .planner.command import main as plan_main
    from .planner.costs import FORMULA
    from .rehearsal.plan_costs import RehearsalCosts

    sources = {"rehearsal": lambda cfg, hw: RehearsalCosts(cfg, hardware=hw.key), "formula": lambda cfg, hw: FORMULA}
    return plan_main(argv, sources=sources)


if __name__ == "__main__":
    raise SystemExit(main())
