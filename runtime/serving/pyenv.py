"""The Python environment Triton's Python-backend models run in (``EXECUTION_ENV_PATH``).

Triton's Python backend starts one stub process per model instance. With the model
parameter ``EXECUTION_ENV_PATH`` set to an environment directory it runs
``source ENV/bin/activate`` and starts the stub with ``ENV/lib`` first on
``LD_LIBRARY_PATH``; the stub's embedded interpreter then finds ``python3`` on ``PATH``,
reads ``ENV/pyvenv.cfg`` and takes that environment's ``site-packages``.

``ensure_env()`` makes such a directory for the Python that runs debertrt: a venv (no pip,
a few KiB of links) whose ``site-packages`` holds one ``.pth`` line that replays this
interpreter's own site directories with ``site.addsitedir`` (their ``.pth`` files too, so
editable installs work). The stub therefore imports exactly the numpy, onnxruntime,
tokenizers and debertrt that ``debertrt`` itself imports, whether this Python is a venv, a
conda environment or a system install. ``ENV/lib`` also gets a link to this interpreter's
``libpython3.X.so`` so the stub loads the same libpython as the interpreter whose standard
library it uses, not some other copy the loader would find first.

The directory lives under ``$DEBERTRT_CACHE`` (default ``~/.cache/debertrt``), named by a hash
of the interpreter and its site directories; it is made once, under a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import site
import sys
import sysconfig
from pathlib import Path

from debertrt.core.errors import DebertrtError

CACHE_ENV = "DEBERTRT_CACHE"
COMPLETE = "debertrt-env.complete"
PTH_NAME = "debertrt-env.pth"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "debertrt")


def site_dirs() -> list[str]:
    """This interpreter's site directories, in import order (user site included when enabled)."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def python_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def default_env_path() -> Path:
    key = "\n".join([sys.executable, sys.prefix, sys.version, *site_dirs()])
    return cache_root() / "triton-python-env" / f"py{python_version()}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def libpython() -> Path | None:
    """This interpreter's shared libpython, or None for a statically linked build."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    path = Path(sysconfig.get_config_var("LIBDIR") or "", name or "")
    return path if name and path.is_file() else None


def ensure_env(path: str | os.PathLike | None = None) -> Path:
    """The execution environment for this interpreter (made if absent); returns its directory."""
    path = Path(path) if path else default_env_path()
    if (path / COMPLETE).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / COMPLETE).is_file():
            _make_env(path)
    return path


def _make_env(path: Path) -> None:
    # Made in place, not renamed into place: bin/activate records its own absolute path.
    import venv

    if path.exists():
        shutil.rmtree(path)
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(path), "platbase": str(path)}))
    lines = "; ".join(f"site.addsitedir({d!r})" for d in site_dirs())
    (purelib / PTH_NAME).write_text(f"import site; {lines}\n")
    library = libpython()
    if library is not None:
        (path / "lib" / library.name).symlink_to(library)
    (path / COMPLETE).write_text(sys.executable + "\n")


def check_stub_python() -> None:
    """The stub links libpython3.X.so: say what to install when this Python has none."""
    if libpython() is not None:
        return
    import ctypes.util

    if ctypes.util.find_library(f"python{python_version()}") is None:
        raise DebertrtError(
            f"this Python {python_version()} is statically linked and no libpython{python_version()}.so is "
            f"installed, which Triton's Python backend stub needs: install it (Debian/Ubuntu: apt-get install "
            f"libpython{python_version()}) or use a Python built with --enable-shared")
