"""`megacrystal train --config C.yaml [dotted.key=value ...]`, also
`torchrun --nproc-per-node N -m megacrystal.train --config C.yaml [overrides]`.

Exit codes: see `megacrystal.train.exit_codes` (0 done, 2 bad input, 3 non-finite, 4 stalled step,
75 stopped by a signal after saving, 130 second SIGINT)."""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError, load_config
from . import exit_codes
from .checkpoint import CheckpointError
from .finite import NonFiniteError
from .preemption import StopRequested


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="a run config (YAML)")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. parallel.tp=2 train.max_steps=10")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides)
        from .loop import train

        train(cfg)
    except (ConfigError, CheckpointError) as e:
        return _one_line(e, exit_codes.BAD_INPUT)
    except NonFiniteError as e:
        return _one_line(e, exit_codes.NON_FINITE)
    except StopRequested as e:
        return _one_line(e, exit_codes.PREEMPTED, "; run the same command again to resume")
    finally:
        try:
            from ..parallel.state import destroy

            destroy()
        except ImportError:
            pass
    return exit_codes.OK


def _one_line(e: Exception, code: int, hint: str = "") -> int:
    print(f"megacrystal train: {e}{hint} (exit {code})", file=sys.stderr)
    return code
