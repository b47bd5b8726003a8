"""A Triton Inference Server model repository: text in, the task's answer out.

    REPO/
      README.md                      how to start the server and query it
      <name>/config.pbtxt            ensemble: TEXT (+ TEXT_PAIR) -> tokenizer -> model -> postprocess
      <name>-tokenizer/              Python backend: 1/model.py, 1/debertrt_text.py, 1/tokenizer/ (fast tokenizer)
      <name>-model/                  --engine: platform tensorrt_plan, 1/model.plan, engine.json [, plugin library]
                                     --onnx:   Python backend, 1/model.py + 1/<artifact>.onnx run by ONNX Runtime
      <name>-postprocess/            Python backend: 1/model.py, 1/debertrt_text.py

Both runtimes take the same inputs and give the same outputs, so the ensemble is the same.
``--model-only`` writes the model step alone as ``<name>`` (tasks without post-processing).

Triton's TensorRT backend loads plugin libraries with ``dlopen`` (``LD_PRELOAD`` or
``--backend-config=tensorrt,plugins=...``), so the library must register its creator when
loaded: ``libdebertrt_plugins_static.so``. ``libdebertrt_plugins.so`` only exports
``getCreators`` for ``IPluginRegistry::loadLibrary`` and is not enough for Triton.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from debertrt.core.artifacts import manifest_model, read_json, sha256, write_text
from debertrt.core.errors import DebertrtError, first_line
from debertrt.plugins.libraries import PLUGIN_STATIC_LIBRARY as STATIC_PLUGIN_LIBRARY
from debertrt.runtime.engine_json import engine_json_path, read_engine_json
from debertrt.runtime.tensorrt import cached_plugin_library

from . import triton_config as tc
from .triton_readme import render_readme

DEFAULT_ONNX_MAX_BATCH = 16
DEFAULT_PAD_MULTIPLE = 16
DEFAULT_MAX_LENGTH = 512  # --model-only ONNX variant without --max-length
TEXT_MODULE = "debertrt_text.py"


@dataclass(frozen=True)
class TritonOptions:
    name: str | None = None               # default <model>-<task>
    model: str | None = None              # preset or checkpoint for the tokenizer and labels (default: recorded one)
    tokenizer: str | os.PathLike | None = None  # a directory with the tokenizer files (default: the model's)
    model_only: bool = False              # write the model step alone, as <name>
    python_env: str = "auto"              # auto: this Python's packages | none: the server's Python | a path
    max_batch_size: int | None = None     # ONNX variant (default 16); engines: their profiles'
    max_length: int | None = None         # ONNX variant (default the model's maximum); engines: their profiles'
    pad_to_multiple_of: int = DEFAULT_PAD_MULTIPLE
    instances: int = 1
    max_queue_delay_us: int = tc.DEFAULT_QUEUE_DELAY_US
    plugin_library: str | os.PathLike | None = None

    def __post_init__(self):
        for attr in ("instances", "pad_to_multiple_of", "max_batch_size", "max_length"):
            value = getattr(self, attr)
            if value is not None and value < 1:
                raise DebertrtError(f"{attr.replace('_', '-')} must be >= 1, got {value}")


@dataclass
class ModelSource:
    """The model step's artifact and what it takes and gives."""

    kind: str                          # "engine" or "onnx"
    path: Path                         # the plan or the ONNX file
    model: str | None                  # preset or checkpoint it was made from
    task: str | None
    inputs: list[tc.Tensor]
    outputs: list[tc.Tensor]
    max_batch: int | None
    max_length: int | None
    engine: dict | None = None
    extra_files: list[Path] = field(default_factory=list)  # engine.json / ONNX external data
    min_length: int = 1                # the engine profiles' shortest sequence


# ---- the model step's source ------------------------------------------------------------

def select_engine(path: str | os.PathLike) -> Path:
    """engine.json for ``path`` (plan, json, or a directory with exactly one engine)."""
    path = Path(path)
    if not path.is_dir() or (path / "engine.json").is_file():
        return engine_json_path(path)
    found = sorted(p.with_suffix(".json") for p in path.glob("*.plan") if p.with_suffix(".json").is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DebertrtError(f"no engine in {path} (a NAME.plan with its NAME.json, as debertrt engine or debertrt "
                            f"build write them): build one, or pass --onnx for the ONNX Runtime variant")
    listed = ", ".join(f"{p.name} ({_engine_summary(p)})" for p in found)
    raise DebertrtError(f"{path} holds {len(found)} engines: {listed}; pick one with --engine {found[0]} "
                        f"(export each into its own repository, or under its own --name, to serve several)")


def _engine_summary(json_path: Path) -> str:
    try:
        data = read_json(json_path)
        return f"{data['precision']}, {data['tensorrt']['flavour']} {data['tensorrt']['version']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable engine.json"


def engine_source(path: str | os.PathLike) -> ModelSource:
    json_path = select_engine(path)
    engine = read_engine_json(json_path)
    plan = json_path.with_name(engine["plan"]["path"])
    if not plan.is_file():
        raise DebertrtError(f"{plan} not found: rebuild the engine")
    if sha256(plan) != engine["plan"]["sha256"]:
        raise DebertrtError(f"{plan} does not match {json_path.name} (sha256 differs): rebuild the engine")
    sequence = [p["sequence"][2] for p in engine["profiles"] if p["batch"][0] == 1]
    return ModelSource("engine", plan, engine.get("model"), engine.get("task"),
                       [tc.Tensor.from_dict(t, "input") for t in engine["inputs"]],
                       [tc.Tensor.from_dict(t, "output") for t in engine["outputs"]],
                       max(p["batch"][2] for p in engine["profiles"]), max(sequence) if sequence else None,
                       engine, [json_path], min(p["sequence"][0] for p in engine["profiles"]))


def onnx_source(path: str | os.PathLike, options: TritonOptions) -> ModelSource:
    import onnx
    from onnx.external_data_helper import uses_external_data

    path = Path(path)
    if not path.is_file():
        raise DebertrtError(f"ONNX file {str(path)!r} not found")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise DebertrtError(f"{path}: not a readable ONNX model ({first_line(exc)})") from exc
    tensors = []
    for kind, values in (("input", graph.graph.input), ("output", graph.graph.output)):
        initializers = {t.name for t in graph.graph.initializer}
        tensors.append([tc.Tensor.from_dict(_value_info(v), kind) for v in values if v.name not in initializers])
    data = {entry.value for t in graph.graph.initializer if uses_external_data(t)
            for entry in t.external_data if entry.key == "location"}
    model, task = manifest_model(path)
    return ModelSource("onnx", path, model, task, tensors[0], tensors[1],
                       options.max_batch_size or DEFAULT_ONNX_MAX_BATCH, options.max_length,
                       extra_files=[path.parent / name for name in sorted(data)])


def _value_info(value) -> dict:
    from onnx import helper

    tensor = value.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "undefined"
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return {"name": value.name, "dtype": dtype, "shape": shape}


# ---- tokenizer and labels ---------------------------------------------------------------

@dataclass
class TextAssets:
    tokenizer: object        # a transformers fast tokenizer
    labels: list[str]
    max_position: int
    pad_id: int


def text_assets(model: str | None, task: str, tokenizer_dir: str | os.PathLike | None) -> TextAssets:
    """The checkpoint's fast tokenizer, label names and maximum length (weights are not loaded
    for a checkpoint directory)."""
    from debertrt.core.models import EXTRA_PRESETS, PRESETS, load_model

    if not model:
        raise DebertrtError("the artifact does not record its model: pass --model (preset or checkpoint directory)")
    if model in PRESETS or model in EXTRA_PRESETS:
        ref = load_model(model, task)
        config, tokenizer = ref.config, ref.tokenizer
    else:
        config, tokenizer = _checkpoint_config(Path(model)), None
        tokenizer_dir = tokenizer_dir or model
    if tokenizer_dir:
        tokenizer = _load_tokenizer(Path(tokenizer_dir))
    if tokenizer is None:
        raise DebertrtError(f"{model} has no tokenizer: pass --tokenizer DIR (a directory with tokenizer.json, e.g. "
                            f"a checkpoint's), or --model-only for the bare model step")
    if not getattr(tokenizer, "is_fast", False):
        raise DebertrtError(f"the tokenizer of {model} is not a fast tokenizer: save it with "
                            f"AutoTokenizer.from_pretrained(DIR, use_fast=True).save_pretrained(DIR) and pass --tokenizer")
    labels = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(int(config.num_labels))]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else getattr(config, "pad_token_id", 0)
    return TextAssets(tokenizer, labels, int(config.max_position_embeddings), int(pad_id or 0))


def _checkpoint_config(path: Path):
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise DebertrtError(f"checkpoint {str(path)!r} not found (no config.json): pass --model DIR or a preset")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises several types for a bad config
        raise DebertrtError(f"cannot read {path / 'config.json'}: {first_line(exc)}") from exc


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not path.is_dir():
        raise DebertrtError(f"tokenizer directory {str(path)!r} not found")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    except Exception as exc:
        raise DebertrtError(f"cannot load a tokenizer from {str(path)!r}: {first_line(exc)}") from exc


def python_env(choice: str) -> str | None:
    """EXECUTION_ENV_PATH for the Python-backend models: ``auto`` makes this Python's (see
    ``debertrt.runtime.serving.pyenv``), ``none`` leaves the server's own Python."""
    if choice == "none":
        return None
    if choice == "auto":
        from debertrt.runtime.serving.pyenv import ensure_env

        return str(ensure_env())
    return choice


# ---- the repository ---------------------------------------------------------------------

def model_name(model: str | None, task: str | None) -> str:
    """A Triton model name '<model>-<task>' with only safe characters."""
    base = Path(str(model or "debertrt")).name or "debertrt"
    name = f"{base}-{task}" if task else base
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "debertrt"


def export_triton(repo: str | os.PathLike, engine: str | os.PathLike | None = None,
                  onnx: str | os.PathLike | None = None, options: TritonOptions = TritonOptions()) -> Path:
    """Write the pipeline for ``engine`` (plan, engine.json or its directory) or ``onnx`` into
    ``repo`` (models of the same names are replaced, others kept); returns the ensemble's
    directory (the model step's with ``model_only``)."""
    from debertrt.runtime.serving.text import TASKS

    if (engine is None) == (onnx is None):
        raise DebertrtError("give either --engine (TensorRT plan) or --onnx (ONNX Runtime in the Python backend)")
    source = engine_source(engine) if engine is not None else onnx_source(onnx, options)
    task = source.task
    name = options.name or model_name(options.model or source.model, task)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise DebertrtError(f"Triton model name {name!r}: use letters, digits, '.', '_' or '-'")
    if not options.model_only and task not in TASKS:
        raise DebertrtError(f"no text pipeline for task {task!r} (only {', '.join(TASKS)}): pass --model-only to "
                            f"export the model step alone")
    assets = None if options.model_only else text_assets(options.model or source.model, task, options.tokenizer)
    limits = [source.max_length, options.max_length, assets.max_position if assets else None]
    source.max_length = min((v for v in limits if v), default=DEFAULT_MAX_LENGTH)
    library = _plugin_library(source.engine, options.plugin_library) if source.engine and source.engine["plugins"] else None
    env = None if source.kind == "engine" and options.model_only else python_env(options.python_env)
    model_step = name if options.model_only else f"{name}-model"
    models = {model_step: _model_step(source, model_step, library, env, options)}
    if not options.model_only:
        models.update(_text_steps(source, name, task, assets, env, options))
    repo = Path(repo)
    _write_models(repo, models)
    write_text(repo / "README.md", render_readme(name, source, task, models, library.name if library else None,
                                                 options.model_only, env))
    return repo / name


def _serving_sources() -> Path:
    """runtime/serving/: text.py and the Python-backend models copied into the repository."""
    from debertrt.runtime import serving

    return Path(serving.__file__).resolve().parent


def _model_step(source: ModelSource, name: str, library: Path | None, env: str | None,
                options: TritonOptions) -> dict:
    """{relative path: bytes or a file to copy} of the model step."""
    if source.kind == "engine":
        files = {"config.pbtxt": tc.plan_config(source.engine, name, options.instances, options.max_queue_delay_us),
                 "1/model.plan": source.path, "engine.json": source.extra_files[0]}
        if library is not None:
            files[library.name] = library
        return files
    files = {"config.pbtxt": tc.onnx_model_config(name, source.path.name, source.inputs, source.outputs,
                                                  source.max_batch, source.max_length, env, options.instances,
                                                  options.max_queue_delay_us),
             "1/model.py": _serving_sources() / "triton_models" / "onnx_model.py",
             f"1/{TEXT_MODULE}": _serving_sources() / "text.py", f"1/{source.path.name}": source.path}
    files.update({f"1/{p.name}": p for p in source.extra_files})
    return files


def _text_steps(source: ModelSource, name: str, task: str, assets: TextAssets, env: str | None,
                options: TritonOptions) -> dict:
    needs_pair = task == "question-answering"
    tokenizer_files = _saved_tokenizer(assets.tokenizer)
    tokenizer = {"config.pbtxt": tc.tokenizer_config(f"{name}-tokenizer", source.inputs, source.max_batch,
                                                     source.max_length, assets.pad_id, options.pad_to_multiple_of,
                                                     needs_pair, env, source.min_length),
                 "1/model.py": _serving_sources() / "triton_models" / "tokenizer.py",
                 f"1/{TEXT_MODULE}": _serving_sources() / "text.py"}
    tokenizer.update({f"1/tokenizer/{n}": data for n, data in tokenizer_files.items()})
    postprocess = {"config.pbtxt": tc.postprocess_config(f"{name}-postprocess", task, source.inputs, source.outputs,
                                                         assets.labels, source.max_batch, env),
                   "1/model.py": _serving_sources() / "triton_models" / "postprocess.py",
                   f"1/{TEXT_MODULE}": _serving_sources() / "text.py"}
    ensemble = {"config.pbtxt": tc.ensemble_config(name, task, source.inputs, source.outputs, len(assets.labels),
                                                   source.max_batch), "1/": None}
    return {f"{name}-tokenizer": tokenizer, f"{name}-postprocess": postprocess, name: ensemble}


def _saved_tokenizer(tokenizer) -> dict[str, bytes]:
    """The tokenizer's files as ``save_pretrained`` writes them (tokenizer.json included)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    if "tokenizer.json" not in files:
        raise DebertrtError("the tokenizer did not save a tokenizer.json: the Python tokenizer model needs a fast "
                            "tokenizer")
    return files


def _write_models(repo: Path, models: dict[str, dict]) -> None:
    """Stage every model directory, then move each into place (replacing one of the same name):
    a failure while staging leaves the repository as it was."""
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-triton.", dir=repo))
    try:
        for model, files in models.items():
            for relative, content in files.items():
                target = staging / model / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                if content is None:
                    target.mkdir(exist_ok=True)
                elif isinstance(content, Path):
                    shutil.copyfile(content, target)
                else:
                    target.write_bytes(content if isinstance(content, bytes) else content.encode())
        for model in models:
            final = repo / model
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging / model, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _plugin_library(engine: dict, explicit: str | os.PathLike | None) -> Path:
    """The self-registering plugin library to ship beside a plugin engine."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise DebertrtError(f"plugin library {str(path)!r} not found")
        return path
    recorded = Path((engine["plugin_library"] or {}).get("path") or "")
    candidates = [recorded.with_name(STATIC_PLUGIN_LIBRARY)] if recorded.name else []
    candidates += [d / STATIC_PLUGIN_LIBRARY for d in _checkout_build_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    cached = cached_plugin_library(static=True)
    if cached is not None:
        return cached
    raise DebertrtError(
        f"the engine uses plugins ({', '.join(p['name'] for p in engine['plugins'])}) and Triton loads plugins "
        f"with dlopen, which needs "
        f"{STATIC_PLUGIN_LIBRARY} (built where libnvinfer is found: cmake -S plugins -B build/plugins "
        f"-DTensorRT_ROOT=...); pass it with --plugin-library")


def _checkout_build_dirs() -> list[Path]:
    root = Path(__file__).resolve().parents[1]
    return [root / "build" / "plugins", root / "plugins" / "build"]
