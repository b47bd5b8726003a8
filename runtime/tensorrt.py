"""The TensorRT flavour layer: which TensorRT Python module, its logger, dtype names, and the
plugin library (find, load, check the creators of the ops an engine uses).

Two flavours share TensorRT's API: TensorRT 10.x/11.x (``tensorrt``) and TensorRT-RTX
(``tensorrt_rtx_bindings``, builds ahead of time without a GPU, no plugin layers). Modules
are imported only when asked for, so nothing here needs TensorRT to be installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from debertrt.core.errors import DebertrtError, first_line
from debertrt.plugins import libraries
from debertrt.plugins.libraries import PLUGIN_LIBRARY

PLUGIN_LIBRARY_ENV = "DEBERTRT_PLUGIN_LIBRARY"


@dataclass(frozen=True)
class Flavour:
    """One TensorRT Python module, imported only when asked for."""

    name: str          # backend name on the command line and in engine.json
    module: str        # Python import name
    install: str       # what to install when it is missing
    min_major: int     # oldest supported major version
    ahead_of_time: bool  # builds without a GPU (and never with plugin layers)

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def load(self):
        """The module; a missing or too old one is a one-line ``DebertrtError``."""
        try:
            trt = importlib.import_module(self.module)
        except ImportError as exc:
            raise DebertrtError(f"{self.title} is not installed (cannot import {self.module}: "
                                f"{first_line(exc)}): {self.install}") from exc
        major = _major(getattr(trt, "__version__", "0"))
        if major < self.min_major:
            raise DebertrtError(f"{self.title} {trt.__version__} is too old: debertrt needs "
                                f"{self.min_major}.x or newer ({self.install})")
        return trt

    @property
    def title(self) -> str:
        return "TensorRT-RTX" if self.name == "tensorrt-rtx" else "TensorRT"


FLAVOURS: dict[str, Flavour] = {
    "tensorrt": Flavour(
        "tensorrt", "tensorrt",
        "install TensorRT 10.x/11.x for your CUDA (pip install tensorrt-cu12 or tensorrt-cu13 "
        "--extra-index-url https://pypi.nvidia.com), or use an NGC TensorRT container",
        min_major=10, ahead_of_time=False),
    "tensorrt-rtx": Flavour(
        "tensorrt-rtx", "tensorrt_rtx_bindings",
        "pip install 'debertrt[rtx]' (tensorrt-rtx-cu13-libs + tensorrt-rtx-cu13-bindings)",
        min_major=1, ahead_of_time=True),
}
BACKENDS = tuple(FLAVOURS)


def flavour(name: str) -> Flavour:
    if name not in FLAVOURS:
        raise DebertrtError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return FLAVOURS[name]


def _major(version: str) -> int:
    match = re.match(r"(\d+)", str(version))
    return int(match.group(1)) if match else 0


def find_plugin_library(explicit: str | os.PathLike | None = None, near: str | os.PathLike | None = None) -> Path:
    """The plugin library: ``explicit``, else $DEBERTRT_PLUGIN_LIBRARY, else one beside ``near``,
    else build/plugins/ or plugins/build/ of this checkout."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise DebertrtError(f"plugin library {str(path)!r} not found: build it with "
                                f"cmake -S plugins -B build/plugins && cmake --build build/plugins")
        return path.resolve()
    env = os.environ.get(PLUGIN_LIBRARY_ENV)
    if env:
        return find_plugin_library(env)
    root = Path(__file__).resolve().parents[1]
    candidates = [Path(near) / PLUGIN_LIBRARY] if near else []
    candidates += [root / "build" / "plugins" / PLUGIN_LIBRARY, root / "plugins" / "build" / PLUGIN_LIBRARY]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    cached = cached_plugin_library(static=False)
    if cached is not None:
        return cached
    raise DebertrtError(
        f"the graph has plugin nodes but no plugin library was found: build {PLUGIN_LIBRARY} "
        f"(cmake -S plugins -B build/plugins && cmake --build build/plugins) and pass --plugin-library "
        f"or set {PLUGIN_LIBRARY_ENV}")


def cached_plugin_library(static: bool = False) -> Path | None:
    """A plugin library already built by ``debertrt.plugins.libraries.build`` into its cache, or None
    (never builds)."""
    try:
        return Path(libraries.find_plugin_library(static=static, build_if_missing=False)).resolve()
    except libraries.PluginBuildError:  # not built, or no TensorRT headers configured
        return None


def load_plugin_library(trt, library: str | os.PathLike, plugins: list[dict], title: str = "TensorRT"):
    """Load ``library`` into ``trt``'s plugin registry and check that it provides the creator of every
    op in ``plugins`` (entries with name, version, namespace)."""
    registry = trt.get_plugin_registry()
    wanted = [(p["name"], p["version"], p["namespace"]) for p in plugins]
    key = (trt.__name__, str(Path(library).resolve()))
    if any(registry.get_creator(*w) is None for w in wanted) and key not in _LOADED_LIBRARIES:
        handle = registry.load_library(str(library))
        if handle is None:
            raise DebertrtError(f"{title} could not load the plugin library {library}: built against another "
                                f"TensorRT major version, or its creators are already registered from another file")
        _LOADED_LIBRARIES[key] = handle
    for name, version, namespace in wanted:
        if registry.get_creator(name, version, namespace) is None:
            found = _creator_versions(registry, name, namespace)
            has = f"provides version(s) {', '.join(found)}" if found else f"does not provide {name}"
            raise DebertrtError(f"{library} {has}, but plugin {name} version {version} in namespace {namespace!r} "
                                f"is needed: rebuild the plugin library (or the engine) from this checkout")


_LOADED_LIBRARIES: dict[tuple[str, str], object] = {}  # (module, path) -> handle: load each library once


def _creator_versions(registry, name: str, namespace: str) -> list[str]:
    try:
        creators = registry.all_creators
    except Exception:  # older bindings
        return []
    return sorted({str(c.plugin_version) for c in creators
                   if getattr(c, "name", None) == name and getattr(c, "plugin_namespace", None) == namespace})


_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
           "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8", "INT4": "int4", "FP4": "float4"}


def dtype_name(dtype) -> str:
    """A TensorRT DataType as a NumPy-style name."""
    key = str(dtype).rsplit(".", 1)[-1]
    return _DTYPES.get(key, key.lower())


def make_logger(trt, verbose: bool):
    class Logger(trt.ILogger):
        """Keeps the builder's messages for error reports; prints warnings when verbose."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                print(f"[{severity.name}] {msg}", file=sys.stderr)
            elif verbose and severity in (trt.ILogger.Severity.WARNING, trt.ILogger.Severity.INFO):
                print(f"[{severity.name}] {msg}", file=sys.stderr)

    return Logger()
