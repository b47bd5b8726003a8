#!/usr/bin/env python3
"""DeBERTa attention side by side on a GPU: our fused kernel and its peers, ms and TFLOP/s.

Thin wrapper over ``debertrt.plugins.flash.bench``; ``--help`` lists the options. Runs from a
bare checkout too (see ``scripts/_checkout.py``). Without CUDA it exits 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _checkout beside this file, however it is run
from _checkout import import_module  # noqa: E402

if __name__ == "__main__":
    sys.exit(import_module("debertrt.plugins.flash.bench").main())
