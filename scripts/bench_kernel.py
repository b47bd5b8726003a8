#!/usr/bin/env python3
"""Check and time the DisentangledAttention CUDA kernel on a GPU (no TensorRT needed).

Thin wrapper over ``debertrt.plugins.kernel_check``; ``--help`` lists the options.
Works from a bare checkout too: if the ``debertrt`` package is not installed, this script
maps ``debertrt.plugins`` onto the checkout's ``plugins/`` folder for the run.
"""

from __future__ import annotations

import atexit
import importlib
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _import_kernel_check():
    try:
        return importlib.import_module("debertrt.plugins.kernel_check")
    except ImportError:
        pass
    # Not installed: a temporary namespace package `debertrt` whose `plugins` is the checkout's folder.
    shim = Path(tempfile.mkdtemp(prefix="debertrt-shim-")) / "debertrt"
    shim.mkdir()
    link = shim / "plugins"
    link.symlink_to(REPO / "plugins", target_is_directory=True)
    atexit.register(lambda: (link.unlink(), shim.rmdir(), shim.parent.rmdir()))  # the link only, never its target
    sys.path.insert(0, str(shim.parent))
    for name in [m for m in sys.modules if m == "debertrt" or m.startswith("debertrt.")]:
        del sys.modules[name]
    return importlib.import_module("debertrt.plugins.kernel_check")


if __name__ == "__main__":
    sys.exit(_import_kernel_check().main())
