#!/usr/bin/env python3
"""Megatron-compatible entry point: same flags as Megatron-LM's tools/preprocess_data.py.
Thin: the work is in data_tools/preprocess.py (also `megacrystal preprocess`)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_tools.preprocess import main

if __name__ == "__main__":
    sys.exit(main())
