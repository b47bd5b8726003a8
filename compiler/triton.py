"""A Triton Inference Server model repository for a built engine.

    REPO/
      README.md                      how to start tritonserver (plugin loading included)
      <name>/config.pbtxt            platform "tensorrt_plan", I/O from engine.json, dynamic batching
      <name>/1/model.plan            the engine
      <name>/engine.json             what the engine is (model, precision, TensorRT version)
      <name>/<plugin library>        plugin engines only: a library that registers its creator on load

Triton's convention: with ``max_batch_size > 0`` the batch dimension is implicit, so
``dims`` leave it out (``input_ids`` [batch, sequence] is ``dims: [ -1 ]``).
``max_batch_size`` is the largest batch of the engine's profiles.

Triton's TensorRT backend loads plugin libraries with ``dlopen`` (``LD_PRELOAD`` or
``--backend-config=tensorrt,plugins=...``), so the library must register its creator when
loaded: ``libdebertrt_plugins_static.so``. ``libdebertrt_plugins.so`` only exports
``getCreators`` for ``IPluginRegistry::loadLibrary`` and is not enough for Triton.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from debertrt.core.artifacts import atomic_dir, sha256, write_text
from debertrt.plugins.libraries import PLUGIN_STATIC_LIBRARY
from debertrt.runtime.engine_json import engine_json_path, read_engine_json
from debertrt.runtime.tensorrt import cached_plugin_library
from debertrt.core.errors import DebertrtError

TRITON_DTYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int8": "TYPE_INT8",
    "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8",
}
STATIC_PLUGIN_LIBRARY = PLUGIN_STATIC_LIBRARY
DEFAULT_QUEUE_DELAY_US = 100


def model_name(engine: dict) -> str:
    """A Triton model name from engine.json: '<model>-<task>' with only safe characters."""
    model = Path(str(engine.get("model") or "debertrt")).name or "debertrt"
    task = engine.get("task")
    name = f"{model}-{task}" if task else model
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "debertrt"


def render_config(engine: dict, name: str, instances: int = 1,
                  max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> str:
    """config.pbtxt text for an engine described by ``engine`` (engine.json)."""
    profiles = engine["profiles"]
    if not any(p["batch"][0] == 1 for p in profiles):
        raise DebertrtError("Triton sends batches from 1 up to max_batch_size, but no engine profile starts at "
                            "batch 1: rebuild with --profile batch=1:...")
    max_batch = max(p["batch"][2] for p in profiles)
    tensors = []
    for kind, entries in (("input", engine["inputs"]), ("output", engine["outputs"])):
        for t in entries:
            shape = list(t["shape"])
            if not shape or shape[0] != -1:
                raise DebertrtError(f"{kind} {t['name']} has shape {shape}: Triton batching needs a dynamic "
                                    f"first (batch) dimension; export with dynamic axes")
            if t["dtype"] not in TRITON_DTYPES:
                raise DebertrtError(f"{kind} {t['name']}: dtype {t['dtype']} has no Triton type")
            dims = shape[1:]  # max_batch_size > 0: Triton's dims leave the batch dimension out
            tensors.append((kind, t["name"], TRITON_DTYPES[t["dtype"]], dims))
    opt = sorted({p["batch"][1] for p in profiles if p["batch"][1] > 1})
    lines = [
        f"# Written by debertrt export-triton from {engine['plan']['path']} "
        f"({engine['tensorrt']['flavour']} {engine['tensorrt']['version']}, {engine['precision']}).",
        f'name: "{name}"',
        'platform: "tensorrt_plan"',
        f"max_batch_size: {max_batch}",
    ]
    for kind in ("input", "output"):
        entries = [t for t in tensors if t[0] == kind]
        lines.append(f"{kind} [")
        for i, (_, tensor_name, dtype, dims) in enumerate(entries):
            comma = "," if i < len(entries) - 1 else ""
            lines += ["  {", f'    name: "{tensor_name}"', f"    data_type: {dtype}",
                      f"    dims: [ {', '.join(str(d) for d in dims)} ]", "  }" + comma]
        lines.append("]")
    lines.append("dynamic_batching {")
    if opt:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in opt)} ]")
    lines += [f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}", "}"]
    lines += ["instance_group [", "  {", f"    count: {int(instances)}", "    kind: KIND_GPU"]
    if len(profiles) > 1:
        lines.append(f"    profile: [ {', '.join(f'{chr(34)}{i}{chr(34)}' for i in range(len(profiles)))} ]")
    lines += ["  }", "]"]
    return "\n".join(lines) + "\n"


def export_triton(engine_path: str | os.PathLike, repo: str | os.PathLike, name: str | None = None,
                  plugin_library: str | os.PathLike | None = None, instances: int = 1,
                  max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> Path:
    """Write (or replace) ``repo/<name>/`` for the engine at ``engine_path`` (plan, engine.json or
    its directory) and ``repo/README.md``; returns the model directory."""
    engine = read_engine_json(engine_path)
    json_path = engine_json_path(engine_path)
    plan = json_path.with_name(engine["plan"]["path"])
    if not plan.is_file():
        raise DebertrtError(f"{plan} not found: rebuild the engine")
    if sha256(plan) != engine["plan"]["sha256"]:
        raise DebertrtError(f"{plan} does not match {json_path.name} (sha256 differs): rebuild the engine")
    if instances < 1:
        raise DebertrtError(f"instances must be >= 1, got {instances}")
    name = name or model_name(engine)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise DebertrtError(f"Triton model name {name!r}: use letters, digits, '.', '_' or '-'")
    config = render_config(engine, name, instances, max_queue_delay_us)
    library = _plugin_library(engine, plugin_library) if engine["plugin"] else None

    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    with atomic_dir(repo / name) as tmp:
        (tmp / "1").mkdir()
        shutil.copyfile(plan, tmp / "1" / "model.plan")
        shutil.copyfile(json_path, tmp / "engine.json")
        (tmp / "config.pbtxt").write_text(config)
        if library is not None:
            shutil.copyfile(library, tmp / library.name)
    write_text(repo / "README.md", render_readme(repo, name, engine, library.name if library else None))
    return repo / name


def _plugin_library(engine: dict, explicit: str | os.PathLike | None) -> Path:
    """The self-registering plugin library to ship beside a plugin engine."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise DebertrtError(f"plugin library {str(path)!r} not found")
        return path
    recorded = Path((engine["plugin"].get("library") or {}).get("path") or "")
    candidates = [recorded.with_name(STATIC_PLUGIN_LIBRARY)] if recorded.name else []
    candidates += [d / STATIC_PLUGIN_LIBRARY for d in _checkout_build_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    cached = cached_plugin_library(static=True)
    if cached is not None:
        return cached
    raise DebertrtError(
        f"the engine uses plugin {engine['plugin']['name']} and Triton loads plugins with dlopen, which needs "
        f"{STATIC_PLUGIN_LIBRARY} (built where libnvinfer is found: cmake -S plugins -B build/plugins "
        f"-DTensorRT_ROOT=...); pass it with --plugin-library")


def _checkout_build_dirs() -> list[Path]:
    root = Path(__file__).resolve().parents[1]
    return [root / "build" / "plugins", root / "plugins" / "build"]


def render_readme(repo: Path, name: str, engine: dict, library: str | None) -> str:
    trt = engine["tensorrt"]
    lines = [
        f"# Triton model repository: `{name}`",
        "",
        f"Written by `debertrt export-triton`. Model `{engine.get('model')}` ({engine.get('task')}), "
        f"{engine['precision']}, built with {trt['flavour']} {trt['version']}.",
        "",
        "The engine runs only on the TensorRT version that built it, so use a Triton release whose TensorRT "
        f"is {trt['version']} (see Triton's release notes / framework support matrix), on a GPU the engine was "
        "built for.",
        "",
        "Inputs (Triton's `dims` leave out the batch dimension, since `max_batch_size` > 0):",
        "",
    ]
    lines += [f"- `{t['name']}`: {t['dtype']} {t['shape']}" for t in engine["inputs"]]
    lines += ["", "Outputs:", ""]
    lines += [f"- `{t['name']}`: {t['dtype']} {t['shape']}" for t in engine["outputs"]]
    lines += ["", "Profiles (min:opt:max): " + "; ".join(
        f"batch {':'.join(map(str, p['batch']))}, sequence {':'.join(map(str, p['sequence']))}"
        for p in engine["profiles"]), "",
        "Dynamic batching only merges requests of the same sequence length; pad client-side to a few fixed "
        "lengths to batch more.", "", "## Start the server", ""]
    if library:
        lines += [
            f"The engine contains the `{engine['plugin']['name']}` plugin (namespace `{engine['plugin']['namespace']}`, "
            f"version {engine['plugin']['version']}). `{name}/{library}` registers its creator when loaded; "
            "Triton must load it before it deserializes the engine. Either:",
            "",
            "```sh",
            "tritonserver --model-repository=$PWD \\",
            f"  --backend-config=tensorrt,plugins=\"$PWD/{name}/{library}\"",
            "```",
            "",
            "or",
            "",
            "```sh",
            f"LD_PRELOAD=$PWD/{name}/{library}:$LD_PRELOAD tritonserver --model-repository=$PWD",
            "```",
            "",
            "(use absolute paths; several libraries are separated by `;` in `plugins=`). The library must be "
            "built against the same TensorRT major version as Triton's.",
        ]
    else:
        lines += ["```sh", "tritonserver --model-repository=$PWD", "```", "",
                  "The engine has no plugin layers: nothing else to load."]
    lines += ["", "## Query it", "", "```sh", f"curl localhost:8000/v2/models/{name}/config", "```", ""]
    return "\n".join(lines)
