"""`python -m megacrystal.train` (what torchrun launches): the trainer's command line."""

import sys

from .main import main

sys.exit(main())
