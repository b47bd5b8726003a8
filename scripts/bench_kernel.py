#!/usr/bin/env python3
"""Check and time the DisentangledAttention CUDA kernel on a GPU (no TensorRT needed).

Thin wrapper over ``debertrt.plugins.kernel_check``; ``--help`` lists the options.
Works from a bare checkout too: if the ``debertrt`` package is not installed, this script
maps ``debertrt.core`` and ``debertrt.plugins`` onto the checkout's folders for the run.
"""

from __future__ import annotations

import atexit
import importlib
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


PACKAGES = ("core", "plugins")  # what kernel_check imports: the checkout's folders of the same names


def _import_kernel_check():
    try:
        return importlib.import_module("debertrt.plugins.kernel_check")
    except ImportError:
        pass
    # Not installed: a temporary namespace package `debertrt` whose subpackages are the checkout's folders.
    shim = Path(tempfile.mkdtemp(prefix="debertrt-shim-")) / "debertrt"
    shim.mkdir()
    links = [shim / name for name in PACKAGES]
    for link in links:
        link.symlink_to(REPO / link.name, target_is_directory=True)
    # the links only, never their targets
    atexit.register(lambda: ([link.unlink() for link in links], shim.rmdir(), shim.parent.rmdir()))
    sys.path.insert(0, str(shim.parent))
    for name in [m for m in sys.modules if m == "debertrt" or m.startswith("debertrt.")]:
        del sys.modules[name]
    return importlib.import_module("debertrt.plugins.kernel_check")


if __name__ == "__main__":
    sys.exit(_import_kernel_check().main())
