"""`megacrystal train --config C.yaml [dotted.key=value ...]`, also
`torchrun --nproc-per-node N -m megacrystal.train --config C.yaml [overrides]`.

Exit codes: see `megacrystal.train.exit_codes` (0 done, 2 bad input, 3 non-finite, 4 stalled step,
75 stopped by a signal after saving, 130 second SIGINT)."""

from __future__ import annotations

import argparse
import sys

from ..checkpoint.format import CheckpointError
from ..config import ConfigError, load_config
from . import exit_codes
from .finite import NonFiniteError
from .preemption import StopRequested


def main(argv=None) -> int:
    desc, epilog = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(prog="megacrystal train", description=desc, epilog=epilog)
    ap.add_argument("--config", required=True, help="a run config (YAML)")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. parallel.tp=2 train.max_steps=10")
    a = ap.parse_args(argv)
    code, message = exit_codes.OK, None
    try:
        cfg = load_config(a.config, a.overrides)
        from .loop import train

        train(cfg)
    except (ConfigError, CheckpointError) as e:
        code, message = exit_codes.BAD_INPUT, str(e)
    except NonFiniteError as e:
        code, message = exit_codes.NON_FINITE, str(e)
    except StopRequested as e:
        code, message = exit_codes.PREEMPTED, f"{e}; run the same command again to resume"
    finally:
        try:
            from ..checkpoint import finish_pending

            finish_pending()  # a checkpoint still being written completes before the groups go
            from ..parallel.state import destroy

            destroy()
        except ImportError:
            pass
    if message is not None:  # printed last: after any pending save has logged its completion
        print(f"megacrystal train: {message} (exit {code})", file=sys.stderr)
    return code
