"""Stage 4: an ONNX artifact -> ``engine.plan`` + ``engine.json`` with TensorRT or TensorRT-RTX.

Both flavours are driven through one builder (TensorRT-RTX has TensorRT's API): a
strongly typed network, so the precision comes from the ONNX itself (fp16 tensors,
explicit Q/DQ) and no FP16/INT8 builder flag or calibrator is ever set; one optimization
profile per ``Profile`` over (batch, sequence) on every input; a timing cache reused
across builds; the builder optimization level.

Plugin graphs (``DisentangledAttention`` nodes): TensorRT loads the plugin library and
checks that it provides our creator *before* the ONNX parser meets a plugin node.
TensorRT-RTX refuses them up front: its parser aborts the whole process on a plugin
layer, so it never sees one, and its parse/build runs in a child process anyway.

``engine.json`` beside the plan says what the engine is (model, task, precision,
profiles, plugin, TensorRT flavour and version, input/output names, dtypes and shapes,
hashes); the runtime (``debertrt.runtime.Engine``) checks it before touching the plan.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import atomic_path, read_json, record_stage, sha256, write_json
from .errors import DebertrtError, first_line

ENGINE_FORMAT = "debertrt-engine/1"
PLAN_NAME = "engine.plan"
PLUGIN_LIBRARY_ENV = "DEBERTRT_PLUGIN_LIBRARY"
PLUGIN_LIBRARY_NAME = "libdebertrt_plugins.so"
DEFAULT_OPTIMIZATION_LEVEL = 3

# Every key engine.json has (tests check them all).
ENGINE_JSON_KEYS = (
    "format", "created", "plan", "onnx", "model", "task", "config_hash", "model_version", "max_sequence",
    "precision", "profiles", "plugin", "tensorrt", "builder", "inputs", "outputs",
)


# ---- flavours -------------------------------------------------------------------------

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


# ---- profiles -------------------------------------------------------------------------

PROFILE_DIMS = ("batch", "sequence")


@dataclass(frozen=True)
class Profile:
    """min:opt:max for the batch and sequence dimensions of every input."""

    batch: tuple[int, int, int] = (1, 4, 16)
    sequence: tuple[int, int, int] = (1, 128, 512)

    def __post_init__(self):
        for dim in PROFILE_DIMS:
            values = tuple(int(v) for v in getattr(self, dim))
            if len(values) != 3:
                raise DebertrtError(f"profile {dim} needs min:opt:max, got {values}")
            lo, opt, hi = values
            if lo < 1:
                raise DebertrtError(f"profile {dim} min must be >= 1, got {lo}")
            if not lo <= opt <= hi:
                raise DebertrtError(f"profile {dim} {lo}:{opt}:{hi}: need min <= opt <= max")
            object.__setattr__(self, dim, values)

    @classmethod
    def parse(cls, text: str) -> "Profile":
        """``batch=1:4:16,sequence=1:128:512``; a single number is a static dimension
        (``batch=8`` is 8:8:8); a dimension left out keeps its default."""
        values = {}
        for part in filter(None, (p.strip() for p in re.split(r"[,\s]+", text))):
            key, sep, spec = part.partition("=")
            key = key.strip()
            if not sep or key not in PROFILE_DIMS:
                raise DebertrtError(f"bad profile {text!r}: write e.g. batch=1:4:16,sequence=1:128:512")
            if key in values:
                raise DebertrtError(f"bad profile {text!r}: {key} given twice")
            try:
                numbers = tuple(int(v) for v in spec.split(":"))
            except ValueError:
                raise DebertrtError(f"bad profile {text!r}: {key} needs integers min:opt:max") from None
            if len(numbers) == 1:
                numbers = numbers * 3
            if len(numbers) != 3:
                raise DebertrtError(f"bad profile {text!r}: {key} needs min:opt:max (or one number)")
            values[key] = numbers
        if not values:
            raise DebertrtError(f"empty profile {text!r}: write e.g. batch=1:4:16,sequence=1:128:512")
        return cls(**values)

    def __str__(self) -> str:
        return ",".join(f"{d}={':'.join(map(str, getattr(self, d)))}" for d in PROFILE_DIMS)

    def to_dict(self) -> dict:
        return {d: list(getattr(self, d)) for d in PROFILE_DIMS}

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        return cls(**{d: tuple(data[d]) for d in PROFILE_DIMS})

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(min, opt, max) shapes of a [batch, sequence] input."""
        return tuple((self.batch[i], self.sequence[i]) for i in range(3))

    def contains(self, batch: int, sequence: int) -> bool:
        return self.batch[0] <= batch <= self.batch[2] and self.sequence[0] <= sequence <= self.sequence[2]

    def fit_to(self, max_sequence: int) -> "Profile":
        """The default profile clipped to a model's maximum sequence."""
        lo, opt, hi = self.sequence
        hi = min(hi, max_sequence)
        return Profile(self.batch, (min(lo, hi), min(opt, hi), hi))


DEFAULT_PROFILE = Profile()


# ---- options --------------------------------------------------------------------------

@dataclass(frozen=True)
class EngineOptions:
    """How to build. ``profiles=()`` means the default profile clipped to the model's maximum sequence.

    - backend: "tensorrt" (10.x/11.x) or "tensorrt-rtx" (ahead of time, no GPU needed, no plugins)
    - profiles: one optimization profile each, for batch and sequence of every input
    - optimization_level: builder optimization level 0..5 (TensorRT's default is 3)
    - timing_cache: a file read before and written after the build (TensorRT only; TensorRT-RTX has none)
    - plugin_library: libdebertrt_plugins.so for plugin graphs (default: $DEBERTRT_PLUGIN_LIBRARY,
      then build/plugins/ of this checkout)
    - workspace_mib: a workspace memory pool limit (default: TensorRT's)
    - compute_capabilities: TensorRT-RTX targets, e.g. ("sm86", "sm89") (default: its own portable set)
    - subprocess: build in a child process (None: yes for TensorRT-RTX, no for TensorRT)
    - verbose: print the builder's warnings and info lines
    """

    backend: str = "tensorrt"
    profiles: tuple[Profile, ...] = ()
    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL
    timing_cache: str | os.PathLike | None = None
    plugin_library: str | os.PathLike | None = None
    workspace_mib: int | None = None
    compute_capabilities: tuple[str, ...] = ()
    subprocess: bool | None = None
    verbose: bool = False

    def __post_init__(self):
        flavour(self.backend)
        profiles = self.profiles
        if isinstance(profiles, (Profile, str)):
            profiles = (profiles,)
        object.__setattr__(self, "profiles",
                           tuple(Profile.parse(p) if isinstance(p, str) else p for p in profiles))
        if not 0 <= int(self.optimization_level) <= 5:
            raise DebertrtError(f"optimization level {self.optimization_level} is outside 0..5")
        if self.workspace_mib is not None and int(self.workspace_mib) < 1:
            raise DebertrtError(f"workspace must be >= 1 MiB, got {self.workspace_mib}")
        capabilities = tuple(_compute_capability(c) for c in self.compute_capabilities)
        if capabilities and self.backend != "tensorrt-rtx":
            raise DebertrtError("compute capabilities are a TensorRT-RTX option: TensorRT builds for the GPU it runs on")
        object.__setattr__(self, "compute_capabilities", capabilities)

    @property
    def flavour(self) -> Flavour:
        return flavour(self.backend)

    @property
    def in_subprocess(self) -> bool:
        return self.flavour.ahead_of_time if self.subprocess is None else bool(self.subprocess)


RTX_COMPUTE_CAPABILITIES = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")


def _compute_capability(text: str) -> str:
    """"sm_86", "sm86", "8.6", "86" -> "sm86" (a member of TensorRT-RTX's ComputeCapability)."""
    compact = str(text).lower().replace("_", "").replace(".", "")
    if not compact.startswith("sm"):
        compact = "sm" + compact
    if compact not in RTX_COMPUTE_CAPABILITIES:
        raise DebertrtError(f"unknown compute capability {text!r}: choose from {', '.join(RTX_COMPUTE_CAPABILITIES)}")
    return compact


# ---- what the ONNX holds --------------------------------------------------------------

@dataclass
class GraphInfo:
    """What build_engine reads from the ONNX file and the manifest beside it."""

    precision: str
    plugin_nodes: int
    plugin: dict | None                      # name/namespace/version of the plugin nodes
    export: dict = field(default_factory=dict)  # the "export" stage of manifest.json, if any


def inspect_onnx(path: str | os.PathLike) -> GraphInfo:
    """Precision, plugin nodes (with their namespace/version) and the export manifest of an ONNX file."""
    import onnx

    from debertrt.plugins import spec

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise DebertrtError(f"{path}: not a readable ONNX model ({first_line(exc)})") from exc
    nodes = [n for n in _all_nodes(model.graph) if n.op_type == spec.OP_TYPE]
    plugin = None
    if nodes:
        seen = set()
        for node in nodes:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            namespace = _text(attrs.get("plugin_namespace", b""))
            version = _text(attrs.get("plugin_version", b""))
            seen.add((namespace, version))
        if len(seen) > 1:
            raise DebertrtError(f"{path}: {spec.OP_TYPE} nodes disagree on namespace/version {sorted(seen)}")
        namespace, version = seen.pop()
        if (namespace, version) != (spec.PLUGIN_NAMESPACE, spec.PLUGIN_VERSION):
            raise DebertrtError(
                f"{path}: {spec.OP_TYPE} nodes ask for namespace {namespace!r} version {version!r}, but this "
                f"debertrt provides {spec.PLUGIN_NAMESPACE!r} version {spec.PLUGIN_VERSION!r}: rerun the rewrite")
        plugin = {"name": spec.OP_TYPE, "namespace": namespace, "version": version}
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        precision = "int8"
    elif any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        precision = "fp16"
    else:
        precision = "fp32"
    manifest = path.parent / "manifest.json"
    export = {}
    if manifest.is_file():
        try:
            export = read_json(manifest).get("stages", {}).get("export", {}) or {}
        except (OSError, ValueError):
            export = {}
    return GraphInfo(precision=precision, plugin_nodes=len(nodes), plugin=plugin, export=export)


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:  # subgraphs (If / Loop / Scan)
            if attr.g is not None and attr.g.node:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---- plugin library -------------------------------------------------------------------

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
    candidates = [Path(near) / PLUGIN_LIBRARY_NAME] if near else []
    candidates += [root / "build" / "plugins" / PLUGIN_LIBRARY_NAME, root / "plugins" / "build" / PLUGIN_LIBRARY_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    cached = cached_plugin_library(static=False)
    if cached is not None:
        return cached
    raise DebertrtError(
        f"the graph has plugin nodes but no plugin library was found: build {PLUGIN_LIBRARY_NAME} "
        f"(cmake -S plugins -B build/plugins && cmake --build build/plugins) and pass --plugin-library "
        f"or set {PLUGIN_LIBRARY_ENV}")


def cached_plugin_library(static: bool = False) -> Path | None:
    """A plugin library already built by ``debertrt.plugins.cuda_kernel.build`` into its cache, or None
    (never builds)."""
    try:
        from debertrt.plugins import cuda_kernel

        return Path(cuda_kernel.find_plugin_library(static=static, build_if_missing=False)).resolve()
    except Exception:  # not built, no headers configured, or the module is unavailable: no cached library
        return None


def load_plugin_library(trt, library: str | os.PathLike, plugin: dict, title: str = "TensorRT"):
    """Load ``library`` into ``trt``'s plugin registry and check that it provides ``plugin``'s creator."""
    registry = trt.get_plugin_registry()
    name, version, namespace = plugin["name"], plugin["version"], plugin["namespace"]
    key = (trt.__name__, str(Path(library).resolve()))
    if registry.get_creator(name, version, namespace) is None and key not in _LOADED_LIBRARIES:
        handle = registry.load_library(str(library))
        if handle is None:
            raise DebertrtError(f"{title} could not load the plugin library {library}: built against another "
                                f"TensorRT major version, or its creators are already registered from another file")
        _LOADED_LIBRARIES[key] = handle
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


# ---- the build ------------------------------------------------------------------------

def build_engine(onnx_path: str | os.PathLike, out_dir: str | os.PathLike,
                 options: EngineOptions = EngineOptions(), name: str = "engine") -> Path:
    """Build ``out_dir/<name>.plan`` and ``out_dir/<name>.json`` (atomically) from an ONNX artifact.

    Returns the plan's path. Raises ``DebertrtError`` with a one-line reason on any failure
    (module missing, plugin graph for TensorRT-RTX, parser error, profile outside the model).
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise DebertrtError(f"ONNX file {str(onnx_path)!r} not found")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise DebertrtError(f"engine name {name!r}: use letters, digits, '.', '_' or '-'")
    out_dir = Path(out_dir)
    info = inspect_onnx(onnx_path)
    fl = options.flavour
    if info.plugin and fl.ahead_of_time:
        raise DebertrtError(
            f"{onnx_path.name} has {info.plugin_nodes} {info.plugin['name']} plugin node(s): TensorRT-RTX cannot "
            f"build plugin layers; build model.onnx (or model.fp16.onnx / model.int8.onnx) with it, or use "
            f"--backend tensorrt for the plugin graph")
    max_sequence = info.export.get("max_sequence")
    profiles = options.profiles or (DEFAULT_PROFILE.fit_to(max_sequence) if max_sequence else DEFAULT_PROFILE,)
    for profile in profiles:
        if max_sequence and profile.sequence[2] > max_sequence:
            raise DebertrtError(f"profile {profile}: sequence max {profile.sequence[2]} exceeds the model's "
                                f"maximum {max_sequence} (max_position_embeddings)")
    if options.in_subprocess:
        _check_importable(fl)  # the child imports it; fail here with the install hint
    else:
        fl.load()
    library = find_plugin_library(options.plugin_library, near=onnx_path.parent) if info.plugin else None

    request = {
        "onnx": str(onnx_path.resolve()),
        "backend": options.backend,
        "profiles": [p.to_dict() for p in profiles],
        "optimization_level": int(options.optimization_level),
        "timing_cache": str(Path(options.timing_cache).resolve()) if options.timing_cache else None,
        "plugin": info.plugin,
        "plugin_library": str(library) if library else None,
        "workspace_mib": options.workspace_mib,
        "compute_capabilities": list(options.compute_capabilities),
        "verbose": bool(options.verbose),
    }
    plan_path = out_dir / f"{name}.plan"
    json_path = out_dir / f"{name}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with atomic_path(plan_path) as tmp_plan:
        request["plan"] = str(Path(tmp_plan).resolve())
        result = _build_in_subprocess(request) if options.in_subprocess else _build(request)
        seconds = time.perf_counter() - started
        plan_sha = sha256(tmp_plan)
        plan_bytes = tmp_plan.stat().st_size
        metadata = {
            "format": ENGINE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "plan": {"path": plan_path.name, "sha256": plan_sha, "bytes": plan_bytes},
            "onnx": {"path": str(onnx_path.resolve()), "name": onnx_path.name, "sha256": sha256(onnx_path)},
            "model": info.export.get("inputs", {}).get("model"),
            "task": info.export.get("inputs", {}).get("task"),
            "config_hash": info.export.get("inputs", {}).get("config_hash"),
            "model_version": info.export.get("model_version"),
            "max_sequence": max_sequence,
            "precision": info.precision,
            "profiles": [p.to_dict() for p in profiles],
            "plugin": ({**info.plugin, "nodes": info.plugin_nodes,
                        "library": {"path": str(library), "name": library.name, "sha256": sha256(library)}}
                       if info.plugin else None),
            "tensorrt": {"flavour": fl.name, "module": fl.module, "version": result["version"]},
            "builder": {"optimization_level": int(options.optimization_level),
                        "timing_cache": result["timing_cache"],
                        "workspace_mib": options.workspace_mib,
                        "compute_capabilities": list(options.compute_capabilities) or None,
                        "strongly_typed": result["strongly_typed"],
                        "subprocess": options.in_subprocess,
                        "seconds": round(seconds, 3)},
            "inputs": result["inputs"],
            "outputs": result["outputs"],
        }
        # json first, plan last (both atomic): a plan on disk always has its description beside it
        write_json(json_path, metadata)
    record_stage(out_dir, f"engine:{name}" if name != "engine" else "engine",
                 inputs={"onnx": onnx_path.name, "onnx_sha256": metadata["onnx"]["sha256"]},
                 options={"backend": options.backend, "profiles": [str(p) for p in profiles],
                          "optimization_level": options.optimization_level,
                          "timing_cache": request["timing_cache"], "plugin_library": request["plugin_library"],
                          "workspace_mib": options.workspace_mib,
                          "compute_capabilities": list(options.compute_capabilities)},
                 outputs={"plan": plan_path, "metadata": json_path},
                 extra={"tensorrt": metadata["tensorrt"], "precision": info.precision})
    return plan_path


def _check_importable(fl: Flavour) -> None:
    if not fl.available():
        raise DebertrtError(f"{fl.title} is not installed (no module {fl.module}): {fl.install}")


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


def _build(request: dict) -> dict:
    """Parse and build in this process; writes the plan to ``request['plan']``."""
    fl = flavour(request["backend"])
    trt = fl.load()
    logger = make_logger(trt, request["verbose"])
    if request["plugin"]:
        if fl.ahead_of_time:  # the caller checked; a second guard, since this would abort the process
            raise DebertrtError("TensorRT-RTX cannot build plugin layers")
        load_plugin_library(trt, request["plugin_library"], request["plugin"], fl.title)

    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = (1 << int(strongly_typed)) if strongly_typed is not None else 0  # TensorRT 11: always strongly typed
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(request["onnx"]):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise DebertrtError(f"{fl.title} could not parse {Path(request['onnx']).name}: "
                            f"{errors[0] if errors else 'unknown parser error'}")

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    config = builder.create_builder_config()
    config.builder_optimization_level = request["optimization_level"]
    if request["workspace_mib"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(request["workspace_mib"]) << 20)
    if request["compute_capabilities"]:
        config.num_compute_capabilities = len(request["compute_capabilities"])
        for i, cc in enumerate(request["compute_capabilities"]):
            config.set_compute_capability(getattr(trt.ComputeCapability, cc.upper()), i)

    for spec in request["profiles"]:
        profile = builder.create_optimization_profile()
        p = Profile.from_dict(spec)
        for tensor in inputs:
            shape = list(tensor.shape)
            if len(shape) != 2:
                raise DebertrtError(f"input {tensor.name} has shape {shape}: debertrt engines take "
                                    f"[batch, sequence] inputs")
            lo, opt, hi = p.shapes()
            for axis, dim_name in enumerate(PROFILE_DIMS):
                if shape[axis] >= 0 and not lo[axis] == opt[axis] == hi[axis] == shape[axis]:
                    raise DebertrtError(f"input {tensor.name} has a static {dim_name} of {shape[axis]}: use "
                                        f"{dim_name}={shape[axis]} in the profile, or export with dynamic axes")
            profile.set_shape(tensor.name, lo, opt, hi)
        config.add_optimization_profile(profile)

    timing_cache = None
    cache_path = request["timing_cache"]
    if cache_path and fl.ahead_of_time:
        timing_cache = {"path": cache_path, "loaded": False, "saved": False,
                        "note": "TensorRT-RTX has no timing cache (its timing-cache calls are no-ops)"}
    elif cache_path:
        blob = Path(cache_path).read_bytes() if Path(cache_path).is_file() else b""
        cache = config.create_timing_cache(blob)
        if not config.set_timing_cache(cache, False):
            raise DebertrtError(f"timing cache {cache_path} does not match this TensorRT/GPU: delete it")
        timing_cache = {"path": cache_path, "loaded": bool(blob)}

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DebertrtError(f"{fl.title} failed to build the engine: "
                            f"{logger.errors[-1] if logger.errors else 'no error message'}")
    with open(request["plan"], "wb") as f:
        f.write(memoryview(plan))
    if timing_cache is not None and not fl.ahead_of_time:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
        timing_cache["saved"] = True

    def describe(tensor):
        return {"name": tensor.name, "dtype": dtype_name(tensor.dtype), "shape": [int(d) for d in tensor.shape]}

    return {"version": str(trt.__version__), "strongly_typed": True, "timing_cache": timing_cache,
            "inputs": [describe(t) for t in inputs], "outputs": [describe(t) for t in outputs]}


_WORKER_CODE = "import sys; from debertrt.compiler.engine import _worker; sys.exit(_worker(sys.argv[1], sys.argv[2]))"


def _build_in_subprocess(request: dict) -> dict:
    """``_build`` in a child Python: a crash or abort in the native library cannot take this process down."""
    fl = flavour(request["backend"])
    with tempfile.TemporaryDirectory(prefix="debertrt-build-") as tmp:
        request_path = Path(tmp) / "request.json"
        result_path = Path(tmp) / "result.json"
        request_path.write_text(json.dumps(request))
        # cwd: a core dump of a crashing child lands in the temporary directory, not the user's
        proc = subprocess.run([sys.executable, "-c", _WORKER_CODE, str(request_path), str(result_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
        if request["verbose"] and proc.stderr:
            sys.stderr.write(proc.stderr)
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
        if proc.returncode == 0 and result and "error" not in result:
            return result
        if result and "error" in result:
            raise DebertrtError(result["error"])
        tail = [line for line in (proc.stderr or "").splitlines() if line.strip()]
        if proc.returncode < 0:
            sig = signal.Signals(-proc.returncode).name
            raise DebertrtError(f"the {fl.title} build process died with {sig}"
                                f"{': ' + tail[-1] if tail else ''}")
        raise DebertrtError(f"the {fl.title} build process failed (exit {proc.returncode})"
                            f"{': ' + tail[-1] if tail else ''}")


def _worker(request_path: str, result_path: str) -> int:
    """Entry point of the build child process."""
    request = json.loads(Path(request_path).read_text())
    try:
        result = _build(request)
    except DebertrtError as exc:
        Path(result_path).write_text(json.dumps({"error": str(exc)}))
        return 1
    Path(result_path).write_text(json.dumps(result))
    return 0


# ---- reading engine.json --------------------------------------------------------------

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
    if not isinstance(data, dict) or data.get("format") != ENGINE_FORMAT:
        raise DebertrtError(f"{json_path} is not a debertrt engine description (format "
                            f"{data.get('format') if isinstance(data, dict) else None!r}, expected "
                            f"{ENGINE_FORMAT!r}): rebuild the engine")
    missing = [k for k in ENGINE_JSON_KEYS if k not in data]
    if missing:
        raise DebertrtError(f"{json_path} lacks {', '.join(missing)}: rebuild the engine")
    return data
