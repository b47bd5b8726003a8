"""Stage 4: an ONNX artifact -> ``engine.plan`` + ``engine.json`` with TensorRT or TensorRT-RTX.

Both flavours are driven through one builder (TensorRT-RTX has TensorRT's API): a
strongly typed network, so the precision comes from the ONNX itself (fp16 tensors,
explicit Q/DQ) and no FP16/INT8 builder flag or calibrator is ever set; one optimization
profile per ``Profile`` over (batch, sequence) on every input; a timing cache reused
across builds; the builder optimization level.

Plugin graphs (nodes of any op in ``plugins.spec.OPS``: ``DisentangledAttention``,
``DisentangledFlashAttention``): TensorRT loads the plugin library and checks that it provides
the creator of every op the graph uses *before* the ONNX parser meets a plugin node; a fused
graph in a dtype the plugin does not take (fp32) is refused before TensorRT is asked.
TensorRT-RTX refuses plugin graphs up front: its parser aborts the whole process on a plugin
layer, so it never sees one, and its parse/build runs in a child process anyway.

``engine.json`` beside the plan says what the engine is (model, task, precision,
profiles, plugins and their library, TensorRT flavour and version, input/output names,
dtypes and shapes, hashes); the runtime (``debertrt.runtime.Engine``) checks it before
touching the plan.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from debertrt.core.artifacts import atomic_path, read_json, record_stage, sha256, write_json
from debertrt.core.errors import DebertrtError
from debertrt.core.resources import measured
from debertrt.runtime.engine_json import ENGINE_FORMAT
from debertrt.runtime.profiles import DEFAULT_PROFILE, Profile
from debertrt.runtime.tensorrt import (Flavour, dtype_name, find_plugin_library, flavour, load_plugin_library,
                                       make_logger)

DEFAULT_OPTIMIZATION_LEVEL = 3

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
    plugins: list[dict]                      # per op used: name/namespace/version/nodes/dtypes (graph_types)
    export: dict = field(default_factory=dict)  # the "export" stage of manifest.json, if any
    input_rank: int = 2                      # 3: [batch, choices, sequence] (multiple choice)
    plugin_max_sequence: int | None = None   # the longest sequence the plugin nodes' position table covers

    @property
    def plugin_nodes(self) -> int:
        return sum(p["nodes"] for p in self.plugins)


def inspect_onnx(path: str | os.PathLike) -> GraphInfo:
    """Precision, plugin ops (with their namespace/version) and the export manifest of an ONNX file."""
    from debertrt.core import onnx_utils as ox
    from debertrt.plugins.graph_types import is_plugin_node, plugin_usage

    path = Path(path)
    model = ox.skeleton(path)  # structure, types and shapes: no weights needed
    plugins = plugin_usage(model, str(path))
    manifest = path.parent / "manifest.json"
    export = {}
    if manifest.is_file():
        try:
            export = read_json(manifest).get("stages", {}).get("export", {}) or {}
        except (OSError, ValueError):
            export = {}
    ranks = {len(i.type.tensor_type.shape.dim) for i in model.graph.input}
    nodes = [n for n in ox.all_nodes(model.graph) if is_plugin_node(n)]
    return GraphInfo(precision=ox.precision(model), plugins=plugins, export=export,
                     input_rank=max(ranks, default=2), plugin_max_sequence=_table_max_sequence(model, nodes))


def _table_max_sequence(model, nodes) -> int | None:
    """The longest sequence the plugin nodes' relative-position tables cover ((length + 1) / 2)."""
    lengths = {math.prod(init.dims) for init in model.graph.initializer
               if any(n.input and n.input[-1] == init.name for n in nodes)}
    return (min(lengths) + 1) // 2 if lengths else None


def _plugins_text(plugins: list[dict]) -> str:
    return ", ".join(f"{p['nodes']} {p['name']}" for p in plugins)


def plugin_dtype_problem(path: str | os.PathLike, info: GraphInfo) -> str | None:
    """Why TensorRT cannot take this graph's plugin nodes (an I/O dtype their plugin does not take: it
    would find no format for them), or None."""
    from debertrt.plugins.spec import OPS

    for p in info.plugins:
        allowed = OPS[p["name"]].tensorrt_dtypes
        refused = [d for d in p["dtypes"] if d not in allowed]
        if refused:
            return (f"{Path(path).name}: its {p['name']} nodes are {', '.join(refused)}, the TensorRT plugin takes "
                    f"{', '.join(allowed)}: build the fp16 graph, or the unfused one for fp32")
    return None


# ---- the build ------------------------------------------------------------------------
@measured
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
    if info.plugins and fl.ahead_of_time:
        raise DebertrtError(
            f"{onnx_path.name} has plugin nodes ({_plugins_text(info.plugins)}): TensorRT-RTX cannot "
            f"build plugin layers; build model.onnx (or model.fp16.onnx / model.int8.onnx) with it, or use "
            f"--backend tensorrt for the plugin graph")
    problem = plugin_dtype_problem(onnx_path, info)
    if problem:
        raise DebertrtError(problem)
    max_sequence = info.export.get("max_sequence")
    profiles = options.profiles or (DEFAULT_PROFILE.fit_to(max_sequence) if max_sequence else DEFAULT_PROFILE,)
    profiles = tuple(p.for_rank(info.input_rank) for p in profiles)
    for profile in profiles:
        if max_sequence and profile.sequence[2] > max_sequence:
            raise DebertrtError(f"profile {profile}: sequence max {profile.sequence[2]} exceeds the model's "
                                f"maximum {max_sequence} (its absolute position table, max_position_embeddings)")
        if info.plugin_max_sequence and profile.sequence[2] > info.plugin_max_sequence:
            raise DebertrtError(f"profile {profile}: sequence max {profile.sequence[2]} exceeds what the plugin "
                                f"graph's relative-position table covers ({info.plugin_max_sequence}); rewrite with "
                                f"--max-sequence {profile.sequence[2]}")
    if options.in_subprocess:
        _check_importable(fl)  # the child imports it; fail here with the install hint
    else:
        fl.load()
    library = find_plugin_library(options.plugin_library, near=onnx_path.parent) if info.plugins else None
    plugins = [{k: p[k] for k in ("name", "namespace", "version", "nodes")} for p in info.plugins]

    request = {
        "onnx": str(onnx_path.resolve()),
        "backend": options.backend,
        "profiles": [p.to_dict() for p in profiles],
        "optimization_level": int(options.optimization_level),
        "timing_cache": str(Path(options.timing_cache).resolve()) if options.timing_cache else None,
        "plugins": plugins,
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
            "plugins": plugins,
            "plugin_library": ({"path": str(library), "name": library.name, "sha256": sha256(library)}
                               if library else None),
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


def _build(request: dict) -> dict:
    """Parse and build in this process; writes the plan to ``request['plan']``."""
    fl = flavour(request["backend"])
    trt = fl.load()
    logger = make_logger(trt, request["verbose"])
    if request["plugins"]:
        if fl.ahead_of_time:  # the caller checked; a second guard, since this would abort the process
            raise DebertrtError("TensorRT-RTX cannot build plugin layers")
        load_plugin_library(trt, request["plugin_library"], request["plugins"], fl.title)

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
            if len(shape) != len(p.dims):
                raise DebertrtError(f"input {tensor.name} has shape {shape}: the profile {p} is for "
                                    f"[{', '.join(p.dims)}] inputs")
            lo, opt, hi = p.shapes()
            for axis, dim_name in enumerate(p.dims):
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
