"""Import debertrt modules from an installed package or, failing that, from this checkout.

GPU machines run the scripts from a bare checkout with no ``pip install``: then a temporary
namespace package ``debertrt`` is made whose subpackages are links to the checkout's folders
(the ``[tool.setuptools.package-dir]`` mapping of pyproject.toml), removed at exit.
"""

from __future__ import annotations

import atexit
import importlib
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def package_dirs() -> dict[str, Path]:
    """``{"plugins": REPO / "plugins", ...}`` from pyproject.toml's package-dir table."""
    text = (REPO / "pyproject.toml").read_text()
    return {name: REPO / folder for name, folder in re.findall(r'^"debertrt\.(\w+)"\s*=\s*"([^"]+)"', text, re.M)}


def import_module(name: str):
    """``importlib.import_module(name)`` for a ``debertrt.*`` module, from the checkout if not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    root = Path(tempfile.mkdtemp(prefix="debertrt-shim-"))
    shim = root / "debertrt"
    shim.mkdir()
    for sub, folder in package_dirs().items():
        (shim / sub).symlink_to(folder, target_is_directory=True)
    atexit.register(shutil.rmtree, root, True)  # removes the links, never what they point to
    sys.path.insert(0, str(root))
    for loaded in [m for m in sys.modules if m == "debertrt" or m.startswith("debertrt.")]:
        del sys.modules[loaded]
    return importlib.import_module(name)
