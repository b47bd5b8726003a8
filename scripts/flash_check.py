#!/usr/bin/env python3
"""Correctness matrix of the DisentangledFlashAttention Triton kernel: ``gpu`` (CUDA) or ``interpret`` (CPU).

Thin wrapper over ``debertrt.plugins.flash.check``; ``--help`` lists the options. Runs from a
bare checkout too (see ``scripts/_checkout.py``). Exit 0 pass, 1 fail, 2 cannot run here.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _checkout beside this file, however it is run
from _checkout import import_module  # noqa: E402

if __name__ == "__main__":
    sys.exit(import_module("debertrt.plugins.flash.check").main())
