"""``engine.json``: what an engine is, written beside every plan and read before touching it.

The format (``ENGINE_FORMAT``) holds the model, task, precision, profiles, the plugin ops the
engine uses (``plugins``: one entry per op, name/namespace/version/nodes) and the library they
were built with (``plugin_library``), TensorRT flavour and version, input/output names, dtypes and
shapes, and hashes of the plan and the ONNX it came from. ``EngineMetadata`` reads and checks it on
any machine: no TensorRT, no GPU. Files of the first format (one ``plugin`` entry, its library
inside) are read as the current one.
"""

from __future__ import annotations

import os
from pathlib import Path

from debertrt.core.artifacts import read_json, sha256
from debertrt.core.errors import DebertrtError, first_line

from .profiles import Profile
from .tensorrt import flavour

ENGINE_FORMAT = "debertrt-engine/2"
FIRST_FORMAT = "debertrt-engine/1"  # "plugin": one op's entry (or null) with its "library" inside
PLAN_NAME = "engine.plan"

# Every key engine.json has (tests check them all).
ENGINE_JSON_KEYS = (
    "format", "created", "plan", "onnx", "model", "task", "config_hash", "model_version", "max_sequence",
    "precision", "profiles", "plugins", "plugin_library", "tensorrt", "builder", "inputs", "outputs",
)


def engine_json_path(path: str | os.PathLike) -> Path:
    """``engine.json`` for a plan path, an engine.json path, or a directory holding engine.plan."""
    path = Path(path)
    if path.is_dir() or path.suffix not in (".plan", ".json"):
        path = path / PLAN_NAME
    return path.with_suffix(".json")


def read_engine_json(path: str | os.PathLike) -> dict:
    """engine.json for ``path`` (plan, json or directory), checked for the keys debertrt writes."""
    json_path = engine_json_path(path)
    if not json_path.is_file():
        raise DebertrtError(f"{json_path} not found: an engine needs the engine.json written beside it by "
                            f"debertrt engine (rebuild the engine)")
    try:
        data = read_json(json_path)
    except (OSError, ValueError) as exc:
        raise DebertrtError(f"{json_path} is corrupt ({first_line(exc)}): rebuild the engine") from exc
    if isinstance(data, dict) and data.get("format") == FIRST_FORMAT and isinstance(data.get("plugin", 0),
                                                                                  (dict, type(None))):
        data = _from_first_format(data)
    if not isinstance(data, dict) or data.get("format") != ENGINE_FORMAT:
        raise DebertrtError(f"{json_path} is not a debertrt engine description (format "
                            f"{data.get('format') if isinstance(data, dict) else None!r}, expected "
                            f"{ENGINE_FORMAT!r}): rebuild the engine")
    missing = [k for k in ENGINE_JSON_KEYS if k not in data]
    if missing:
        raise DebertrtError(f"{json_path} lacks {', '.join(missing)}: rebuild the engine")
    return data


def _from_first_format(data: dict) -> dict:
    """A first-format engine.json as the current format: its one plugin entry becomes the list."""
    data = dict(data, format=ENGINE_FORMAT)
    plugin = data.pop("plugin", None)
    data["plugins"] = [{k: v for k, v in plugin.items() if k != "library"}] if plugin else []
    data["plugin_library"] = plugin.get("library") if plugin else None
    return data


class EngineMetadata:
    """engine.json of one plan: names, dtypes, profiles, versions. Needs neither TensorRT nor a GPU."""

    def __init__(self, path: str | os.PathLike):
        self.json_path = engine_json_path(path)
        self.data = read_engine_json(self.json_path)
        self.plan_path = self.json_path.with_name(self.data["plan"]["path"])
        self.profiles = [Profile.from_dict(p) for p in self.data["profiles"]]
        if not self.profiles:
            raise DebertrtError(f"{self.json_path} lists no optimization profile: rebuild the engine")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t["name"] for t in self.data["inputs"])

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t["name"] for t in self.data["outputs"])

    @property
    def flavour(self):
        return flavour(self.data["tensorrt"]["flavour"])

    @property
    def version(self) -> str:
        return self.data["tensorrt"]["version"]

    @property
    def plugins(self) -> list[dict]:
        """The plugin ops the engine uses: name, namespace, version, nodes (empty: none)."""
        return self.data["plugins"]

    @property
    def plugin_library(self) -> dict | None:
        """The plugin library the engine was built with: path, name, sha256 (None without plugins)."""
        return self.data["plugin_library"]

    @property
    def precision(self) -> str:
        return self.data["precision"]

    def profile_text(self) -> str:
        return " | ".join(str(p) for p in self.profiles)

    @property
    def input_rank(self) -> int | None:
        """2 for [batch, sequence] inputs, 3 for [batch, choices, sequence] (multiple choice)."""
        ranks = {len(t["shape"]) for t in self.data["inputs"]}
        return ranks.pop() if len(ranks) == 1 else None

    def check_shapes(self, shapes: dict[str, tuple[int, ...]]) -> int:
        """The index of the first profile that takes these input shapes; a clear error otherwise."""
        missing = [n for n in self.input_names if n not in shapes]
        if missing:
            raise DebertrtError(f"{self.plan_path.name}: inputs {missing} are missing (the engine takes "
                                f"{', '.join(self.input_names)})")
        rank = self.input_rank or 2
        layout = "[batch, choices, sequence]" if rank == 3 else "[batch, sequence]"
        dims = set()
        for name in self.input_names:
            shape = tuple(int(d) for d in shapes[name])
            if len(shape) != rank:
                raise DebertrtError(f"{self.plan_path.name}: input {name} has shape {list(shape)}; "
                                    f"the engine takes {layout}")
            dims.add(shape)
        if len(dims) != 1:
            raise DebertrtError(f"{self.plan_path.name}: the inputs disagree on {layout}: {sorted(dims)}")
        shape = dims.pop()
        batch, sequence, choices = shape[0], shape[-1], (shape[1] if rank == 3 else None)
        for index, profile in enumerate(self.profiles):
            if profile.contains(batch, sequence, choices):
                return index
        longest = max(p.sequence[2] for p in self.profiles)
        largest = max(p.batch[2] for p in self.profiles)
        most = max((p.choices[2] for p in self.profiles if p.choices), default=None)
        if sequence > longest:
            why = f"sequence length {sequence} exceeds the engine's maximum {longest}"
        elif batch > largest:
            why = f"batch size {batch} exceeds the engine's maximum {largest}"
        elif choices is not None and most is not None and choices > most:
            why = f"{choices} choices exceed the engine's maximum {most}"
        else:
            axes = ("batch", "choices", "sequence") if rank == 3 else ("batch", "sequence")
            why = f"{' x '.join(f'{a} {n}' for a, n in zip(axes, shape))} is outside every optimization profile"
        raise DebertrtError(f"{self.plan_path.name}: {why} (profiles {self.profile_text()}); truncate or split "
                            f"the inputs, or rebuild with a larger --profile")

    def read_plan(self) -> bytes:
        """The plan's bytes, checked against the size and sha256 in engine.json."""
        if not self.plan_path.is_file():
            raise DebertrtError(f"{self.plan_path} not found: rebuild the engine (debertrt engine ...)")
        expected = self.data["plan"]
        blob = self.plan_path.read_bytes()
        if len(blob) != expected.get("bytes", len(blob)) or sha256(self.plan_path) != expected["sha256"]:
            raise DebertrtError(f"{self.plan_path} does not match {self.json_path.name} (size or sha256 differs): "
                                f"the plan is corrupt or was replaced; rebuild the engine")
        return blob
