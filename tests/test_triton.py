"""Triton model repositories: config.pbtxt parsed with Triton's own model_config protobuf."""

import importlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from debertrt.core.artifacts import sha256, write_json
from debertrt.compiler.cli import main
from debertrt.compiler.engine import EngineOptions, build_engine
from debertrt.runtime.engine_json import ENGINE_FORMAT
from debertrt.runtime.tensorrt import FLAVOURS
from debertrt.core.errors import DebertrtError
from debertrt.compiler import triton as triton_module
from debertrt.compiler.triton import STATIC_PLUGIN_LIBRARY, TritonOptions, export_triton
from debertrt.compiler.triton_config import plan_config
from debertrt.plugins import spec

MODEL_ONLY = TritonOptions(model_only=True)


def model_config_pb2():
    """tritonclient's model_config_pb2. ``tritonclient.grpc`` imports grpc in its __init__, which the
    dev extra may lack; the generated module itself needs only protobuf, so load it from its file."""
    try:
        return importlib.import_module("tritonclient.grpc.model_config_pb2")
    except (ImportError, RuntimeError):
        pass
    found = importlib.util.find_spec("tritonclient")
    if found is None:
        pytest.skip("tritonclient is not installed (pip install 'debertrt[dev]'): cannot check config.pbtxt")
    path = Path(found.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        pytest.skip(f"tritonclient has no {path.name}: cannot check config.pbtxt")
    module_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def parse_config(path):
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    return pb2, text_format.Parse(Path(path).read_text(), pb2.ModelConfig())


def fake_engine(directory, profiles=({"batch": [1, 4, 16], "sequence": [1, 128, 512]},), task="token-classification",
                plugins=(), plugin_library=None, inputs=("input_ids", "attention_mask", "token_type_ids"), name="engine",
                model="tiny-deberta-v2", precision="fp16"):
    """NAME.json (and a stand-in NAME.plan) as build_engine writes them, without building."""
    directory.mkdir(parents=True, exist_ok=True)
    plan = directory / f"{name}.plan"
    plan.write_bytes(b"plan bytes")
    outputs = ([{"name": "logits", "dtype": "float32", "shape": [-1, -1, 3]}] if task == "token-classification" else
               [{"name": "logits", "dtype": "float16", "shape": [-1, 3]}])
    write_json(directory / f"{name}.json", {
        "format": ENGINE_FORMAT, "created": "now",
        "plan": {"path": plan.name, "sha256": sha256(plan), "bytes": plan.stat().st_size},
        "onnx": {"path": "/x/model.onnx", "name": "model.onnx", "sha256": "0" * 64},
        "model": model, "task": task, "config_hash": "abc", "model_version": "v2", "max_sequence": 512,
        "precision": precision, "profiles": list(profiles), "plugins": list(plugins),
        "plugin_library": plugin_library,
        "tensorrt": {"flavour": "tensorrt", "module": "tensorrt", "version": "10.9.0.34"},
        "builder": {}, "inputs": [{"name": n, "dtype": "int64", "shape": [-1, -1]} for n in inputs],
        "outputs": outputs,
    })
    return directory


NER_LABELS = {0: "O", 1: "B-ITEM", 2: "I-ITEM"}


def ner_checkpoint(text_checkpoint):
    return text_checkpoint("tiny-deberta-v2", "token-classification", num_labels=3, id2label=NER_LABELS,
                           label2id={v: k for k, v in NER_LABELS.items()})


def test_plan_config_follows_tritons_batch_convention(tmp_path):
    model_dir = export_triton(tmp_path / "repo", engine=fake_engine(tmp_path / "engine"), options=MODEL_ONLY)
    assert model_dir == tmp_path / "repo" / "tiny-deberta-v2-token-classification"
    pb2, config = parse_config(model_dir / "config.pbtxt")
    assert config.name == model_dir.name and config.platform == "tensorrt_plan"
    assert config.max_batch_size == 16
    assert [i.name for i in config.input] == ["input_ids", "attention_mask", "token_type_ids"]
    for tensor in config.input:  # [batch, sequence] without the batch dimension
        assert tensor.data_type == pb2.TYPE_INT64 and list(tensor.dims) == [-1]
    (logits,) = config.output
    assert logits.name == "logits" and logits.data_type == pb2.TYPE_FP32 and list(logits.dims) == [-1, 3]
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU and config.instance_group[0].count == 1
    assert (model_dir / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert json.loads((model_dir / "engine.json").read_text())["task"] == "token-classification"
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert "tritonserver --model-repository" in readme and "debertrt serve" in readme


def test_several_profiles_and_fp16_outputs(tmp_path):
    profiles = ({"batch": [1, 1, 4], "sequence": [1, 64, 128]}, {"batch": [1, 8, 32], "sequence": [1, 16, 32]})
    engine = fake_engine(tmp_path / "engine", profiles=profiles, task="sequence-classification")
    model_dir = export_triton(tmp_path / "repo", engine=engine,
                              options=TritonOptions(name="classifier", instances=2, model_only=True))
    pb2, config = parse_config(model_dir / "config.pbtxt")
    assert config.name == "classifier" and config.max_batch_size == 32
    assert config.output[0].data_type == pb2.TYPE_FP16 and list(config.output[0].dims) == [3]
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert list(config.instance_group[0].profile) == ["0", "1"] and config.instance_group[0].count == 2


def test_plugin_engines_ship_a_self_registering_library(tmp_path, monkeypatch):
    monkeypatch.setattr(triton_module, "_checkout_build_dirs", lambda: [])  # only the libraries made here
    monkeypatch.setattr(triton_module, "cached_plugin_library", lambda static=False: None)
    library_dir = tmp_path / "build"
    library_dir.mkdir()
    (library_dir / "libdebertrt_plugins.so").write_bytes(b"getCreators")
    (library_dir / STATIC_PLUGIN_LIBRARY).write_bytes(b"registers on load")
    plugins = [{"name": op.op_type, "namespace": op.plugin_namespace, "version": op.plugin_version, "nodes": 2}
               for op in spec.OPS.values()]
    library = {"path": str(library_dir / "libdebertrt_plugins.so"), "name": "libdebertrt_plugins.so", "sha256": "0" * 64}
    model_dir = export_triton(tmp_path / "repo", engine=fake_engine(tmp_path / "engine", plugins=plugins,
                                                                    plugin_library=library),
                              options=TritonOptions(name="m", model_only=True))
    assert (model_dir / STATIC_PLUGIN_LIBRARY).read_bytes() == b"registers on load"
    parse_config(model_dir / "config.pbtxt")
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert f'--backend-config=tensorrt,plugins="$PWD/m/{STATIC_PLUGIN_LIBRARY}"' in readme
    assert f"LD_PRELOAD=$PWD/.../{STATIC_PLUGIN_LIBRARY}" in readme
    assert all(f"`{name}` (namespace `{spec.PLUGIN_NAMESPACE}`" in readme for name in spec.OPS)

    (library_dir / STATIC_PLUGIN_LIBRARY).unlink()
    with pytest.raises(DebertrtError, match=f"dlopen, which needs {STATIC_PLUGIN_LIBRARY}"):
        export_triton(tmp_path / "repo2", engine=tmp_path / "engine", options=MODEL_ONLY)
    assert not (tmp_path / "repo2").exists() or not any((tmp_path / "repo2").iterdir())


def test_bad_engines_are_refused(tmp_path):
    engine = fake_engine(tmp_path / "a", profiles=({"batch": [2, 4, 8], "sequence": [1, 8, 16]},))
    with pytest.raises(DebertrtError, match="no engine profile starts at batch 1"):
        export_triton(tmp_path / "repo", engine=engine, options=MODEL_ONLY)
    engine = fake_engine(tmp_path / "b")
    (engine / "engine.plan").write_bytes(b"replaced")
    with pytest.raises(DebertrtError, match="sha256 differs"):
        export_triton(tmp_path / "repo", engine=engine, options=MODEL_ONLY)
    with pytest.raises(DebertrtError, match="engine.json not found"):
        export_triton(tmp_path / "repo", engine=tmp_path / "nothing", options=MODEL_ONLY)
    data = json.loads((fake_engine(tmp_path / "c") / "engine.json").read_text())
    data["inputs"][0]["shape"] = [2, -1]
    with pytest.raises(DebertrtError, match="dynamic first"):
        plan_config(data, "m")
    with pytest.raises(DebertrtError, match="either --engine .* or --onnx"):
        export_triton(tmp_path / "repo", options=MODEL_ONLY)
    masked_lm = fake_engine(tmp_path / "d", task="masked-lm")
    with pytest.raises(DebertrtError, match="no text pipeline for task 'masked-lm'.*--model-only"):
        export_triton(tmp_path / "repo", engine=masked_lm)
    with pytest.raises(DebertrtError, match="tiny-deberta-v2 has no tokenizer: pass --tokenizer"):
        export_triton(tmp_path / "repo", engine=fake_engine(tmp_path / "e"))


def test_exporting_again_replaces_the_model(tmp_path):
    engine = fake_engine(tmp_path / "engine")
    options = TritonOptions(name="m", model_only=True)
    export_triton(tmp_path / "repo", engine=engine, options=options)
    (tmp_path / "repo" / "m" / "stale.txt").write_text("old")
    export_triton(tmp_path / "repo", engine=engine, options=options)
    assert not (tmp_path / "repo" / "m" / "stale.txt").exists()
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["README.md", "m"]  # no staging left


def test_a_directory_of_engines_lists_them(tmp_path, capsys):
    """What `debertrt build` writes: several NAME.plan + NAME.json (and other .json reports) in one directory."""
    out = tmp_path / "debertrt-out"
    for precision in ("fp32", "fp16", "int8"):
        fake_engine(out, name=f"engine.rtx.{precision}", precision=precision)
    write_json(out / "model.fp16.json", {"report": "not an engine"})
    assert main(["export-triton", "--engine", str(out), "--out", str(tmp_path / "repo"), "--model-only"]) == 1
    err = capsys.readouterr().err
    assert f"{out} holds 3 engines: engine.rtx.fp16.json (fp16, tensorrt 10.9.0.34), engine.rtx.fp32.json" in err
    assert f"pick one with --engine {out / 'engine.rtx.fp16.json'}" in err and "model.fp16.json" not in err
    assert not (tmp_path / "repo").exists()
    assert main(["export-triton", "--engine", str(out / "engine.rtx.int8.plan"), "--out", str(tmp_path / "repo"),
                 "--model-only", "--name", "m"]) == 0
    assert "serve it with: debertrt serve" in capsys.readouterr().out
    assert (tmp_path / "repo" / "m" / "1" / "model.plan").is_file()
    single = tmp_path / "single"
    fake_engine(single, name="engine.rtx.fp16")
    assert triton_module.select_engine(single) == single / "engine.rtx.fp16.json"
    with pytest.raises(DebertrtError, match="no engine in"):
        triton_module.select_engine(tmp_path / "repo")


def _ensemble_is_wired(repo: Path, name: str) -> dict:
    """Parse every model of the pipeline; check that each ensemble step reads only tensors that exist
    by then and that the answers come out of the last step. Returns {model: config}."""
    configs = {}
    for model in (name, f"{name}-tokenizer", f"{name}-model", f"{name}-postprocess"):
        configs[model] = parse_config(repo / model / "config.pbtxt")[1]
        assert configs[model].name == model
    ensemble = configs[name]
    available = {i.name for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        step_config = configs[step.model_name]
        assert set(step.input_map) == {i.name for i in step_config.input}
        assert set(step.input_map.values()) <= available, step.model_name
        assert set(step.output_map) <= {o.name for o in step_config.output}
        available |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= set(ensemble.ensemble_scheduling.step[-1].output_map.values())
    assert len({c.max_batch_size for c in configs.values()}) == 1
    return configs


def test_engine_pipeline_configs(tmp_path, text_checkpoint):
    """The TensorRT-plan variant: config-checked here (serving it needs Triton's TensorRT backend and a GPU)."""
    checkpoint = ner_checkpoint(text_checkpoint)
    repo = tmp_path / "repo"
    engine = fake_engine(tmp_path / "engine", model=str(checkpoint))
    export_triton(repo, engine=engine, options=TritonOptions(name="ner", python_env="none"))
    configs = _ensemble_is_wired(repo, "ner")
    pb2 = model_config_pb2()
    assert configs["ner-model"].platform == "tensorrt_plan"
    tokenizer = configs["ner-tokenizer"]
    assert [o.name for o in tokenizer.output] == ["input_ids", "attention_mask", "token_type_ids", "OFFSETS",
                                                  "SEQUENCE_IDS"]
    assert tokenizer.parameters["max_length"].string_value == "512"
    assert [(i.name, i.optional) for i in tokenizer.input] == [("TEXT", True), ("TEXT_PAIR", True)]  # checked inside
    assert "EXECUTION_ENV_PATH" not in tokenizer.parameters  # --python-env none: the server's own Python
    post = configs["ner-postprocess"]
    assert json.loads(post.parameters["labels"].string_value) == ["O", "B-ITEM", "I-ITEM"]
    assert [(o.name, o.data_type) for o in post.output] == [("TOKEN_LABEL_IDS", pb2.TYPE_INT32),
                                                            ("ENTITIES", pb2.TYPE_STRING)]
    assert (repo / "ner-tokenizer" / "1" / "tokenizer" / "tokenizer.json").is_file()
    for step in ("tokenizer", "postprocess"):
        assert (repo / f"ner-{step}" / "1" / "model.py").is_file()
        assert (repo / f"ner-{step}" / "1" / "debertrt_text.py").is_file()

    # a model without token_type_ids: the tokenizer must not emit them
    engine = fake_engine(tmp_path / "engine2", model=str(checkpoint), inputs=("input_ids", "attention_mask"),
                         profiles=({"batch": [1, 2, 8], "sequence": [8, 64, 128]},))
    export_triton(repo, engine=engine, options=TritonOptions(name="ner2", python_env="none"))
    tokenizer = _ensemble_is_wired(repo, "ner2")["ner2-tokenizer"]
    assert "token_type_ids" not in {o.name for o in tokenizer.output}
    assert tokenizer.parameters["max_length"].string_value == "128" and tokenizer.max_batch_size == 8
    assert tokenizer.parameters["min_length"].string_value == "8"  # no text shorter than the profile allows


def test_onnx_pipeline_configs(tmp_path, text_checkpoint):
    from debertrt.compiler.export import ExportOptions, export
    from debertrt.core.models import load_model
    from debertrt.runtime.serving.pyenv import COMPLETE

    checkpoint = text_checkpoint("tiny-deberta-v2", "question-answering", num_labels=2)
    onnx_path = export(load_model(str(checkpoint), "question-answering"), tmp_path / "art",
                       ExportOptions(exporter="torchscript"))
    repo = tmp_path / "repo"
    assert main(["export-triton", "--onnx", str(onnx_path), "--out", str(repo), "--name", "qa",
                 "--max-batch-size", "4", "--max-length", "64"]) == 0
    configs = _ensemble_is_wired(repo, "qa")
    model = configs["qa-model"]
    assert model.backend == "python" and model.max_batch_size == 4
    assert model.parameters["onnx"].string_value == "model.onnx" and (repo / "qa-model" / "1" / "model.onnx").is_file()
    assert [o.name for o in model.output] == ["start_logits", "end_logits"]
    assert configs["qa-tokenizer"].parameters["needs_pair"].string_value == "true"  # the context is required
    env = Path(model.parameters["EXECUTION_ENV_PATH"].string_value)
    assert (env / COMPLETE).is_file() and (env / "bin" / "activate").is_file()
    assert configs["qa-tokenizer"].parameters["max_length"].string_value == "64"


def test_tensorrt_plan_variant_is_served_elsewhere():
    pytest.skip("serving the tensorrt_plan model step needs Triton's TensorRT backend and a GPU with TensorRT; "
                "nvidia-pytriton has neither (Python backend only), so here the TensorRT-plan variant is "
                "config-checked only (test_engine_pipeline_configs); the same pipeline is served end to end with "
                "the ONNX Runtime model step (tests/test_serving.py)")


@pytest.mark.skipif(not FLAVOURS["tensorrt-rtx"].available(),
                    reason="TensorRT-RTX is not installed (pip install 'debertrt[rtx]'): no real engine to export")
def test_cli_exports_a_built_engine(exported, tmp_path, capsys):
    onnx_path = exported("tiny-deberta-v3", "sequence-classification", "torchscript")
    build_engine(onnx_path, tmp_path / "engine", EngineOptions(backend="tensorrt-rtx", optimization_level=0,
                                                               profiles=("batch=1:4:8,sequence=1:16:64",)))
    assert main(["export-triton", "--engine", str(tmp_path / "engine"), "--out", str(tmp_path / "repo")]) == 1
    assert "tiny-deberta-v3 has no tokenizer: pass --tokenizer" in capsys.readouterr().err
    assert main(["export-triton", "--engine", str(tmp_path / "engine"), "--out", str(tmp_path / "repo"),
                 "--model-only"]) == 0
    assert "wrote" in capsys.readouterr().out
    model_dir = tmp_path / "repo" / "tiny-deberta-v3-sequence-classification"
    pb2, config = parse_config(model_dir / "config.pbtxt")
    assert config.max_batch_size == 8 and [i.name for i in config.input] == ["input_ids", "attention_mask"]
    assert list(config.output[0].dims) == [3]
    assert sha256(model_dir / "1" / "model.plan") == sha256(tmp_path / "engine" / "engine.plan")
    assert "TensorRT-RTX runtime" in (tmp_path / "repo" / "README.md").read_text()
    assert main(["export-triton", "--engine", str(tmp_path / "absent"), "--out", str(tmp_path / "repo")]) == 1
    assert "engine.json not found" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "repo")
