"""`megacrystal train --config C.yaml [dotted.key=value ...]`, also
`torchrun --nproc-per-node N -m megacrystal.train --config C.yaml [overrides]`."""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError, load_config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal train", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="a run config (YAML)")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. parallel.tp=2 train.max_steps=10")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides)
        from .loop import train

        train(cfg)
    except ConfigError as e:
        print(f"megacrystal train: {e}", file=sys.stderr)
        return 2
    finally:
        try:
            from .checkpoint_io import finish_pending

            finish_pending()  # a checkpoint still being written completes before the groups go
            from ..parallel.state import destroy

            destroy()
        except ImportError:
            pass
    return 0
