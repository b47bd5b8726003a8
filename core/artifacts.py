"""Artifacts on disk: atomic writes and the manifest each stage leaves beside its output."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .resources import current

CACHE_ENV = "DEBERTRT_CACHE"


def cache_root() -> Path:
    """Where debertrt keeps what it can rebuild (trained presets, built plugin libraries, benchmark
    exports): ``$DEBERTRT_CACHE``, else ``$XDG_CACHE_HOME/debertrt``, else ``~/.cache/debertrt``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "debertrt"


@dataclass(frozen=True)
class StageResult:
    """What a stage wrote: its artifact, its JSON report (if any) and the summary a person reads first."""

    path: Path
    report: Path | None = None
    summary: dict = field(default_factory=dict)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success.

    A failure (or Ctrl-C) part-way leaves no half-written artifact behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; artifacts are ordinary files
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Like ``atomic_path`` for a directory of files (an ONNX model with external data)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def sibling(path: str | os.PathLike, suffix: str) -> Path:
    """``DIR/model.plugin.onnx`` + ``.fp16.onnx`` -> ``DIR/model.plugin.fp16.onnx``: derived
    artifacts and reports are named after the artifact they come from."""
    path = Path(path)
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(stem + suffix)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, data) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def versions(*modules: str) -> dict:
    """Installed versions of the named distributions (absent ones are left out)."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in modules:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


MANIFEST = "manifest.json"


def record_stage(out_dir: str | os.PathLike, stage: str, inputs: dict, options: dict,
                 outputs: dict[str, str | os.PathLike], extra: dict | None = None) -> Path:
    """Record in ``out_dir/manifest.json`` what a stage read, how it was asked, which
    versions ran and what it wrote (with hashes), keeping the other stages' entries; inside
    ``core.resources.measure`` also what it cost (``resources``: wall, CPU, peak RSS)."""
    path = Path(out_dir) / MANIFEST
    data = read_json(path) if path.is_file() else {"stages": {}}
    entry = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": inputs,
        "options": options,
        "outputs": {name: {"path": Path(p).name, "sha256": sha256(p)} for name, p in outputs.items()
                    if Path(p).is_file()},
        "versions": versions("debertrt", "torch", "transformers", "onnx", "onnxruntime", "onnxscript",
                             "onnx-graphsurgeon", "tensorrt", "tensorrt-rtx-cu13-bindings"),
    }
    entry.update(extra or {})
    cost = current()
    if cost is not None:  # read last, so the hashing above counts too
        entry["resources"] = cost
    data["stages"][stage] = entry
    return write_json(path, data)


def manifest_model(artifact: str | os.PathLike) -> tuple[str | None, str | None]:
    """(model, task) the export stage recorded in the manifest beside ``artifact``; (None, None)
    when there is none."""
    manifest = Path(artifact).parent / MANIFEST
    try:
        inputs = read_json(manifest)["stages"]["export"]["inputs"]
        return inputs.get("model"), inputs.get("task")
    except (OSError, KeyError, TypeError, ValueError, AttributeError):
        return None, None


def read_json(path: str | os.PathLike):
    with open(path) as f:
        return json.load(f)
