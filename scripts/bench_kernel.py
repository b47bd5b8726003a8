#!/usr/bin/env python3
"""Check and time the DisentangledAttention CUDA kernel on a GPU (no TensorRT needed).

Thin wrapper over ``debertrt.plugins.kernel_check``; ``--help`` lists the options.
Works from a bare checkout too (see ``scripts/_checkout.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _checkout beside this file, however it is run
from _checkout import import_module  # noqa: E402

if __name__ == "__main__":
    sys.exit(import_module("debertrt.plugins.kernel_check").main())
