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
from debertrt.compiler.triton import STATIC_PLUGIN_LIBRARY, export_triton, render_config
from debertrt.plugins import spec


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
                plugin=None, inputs=("input_ids", "attention_mask", "token_type_ids")):
    """An engine.json (and a stand-in plan) as build_engine writes them, without building."""
    directory.mkdir(parents=True, exist_ok=True)
    plan = directory / "engine.plan"
    plan.write_bytes(b"plan bytes")
    outputs = ([{"name": "logits", "dtype": "float32", "shape": [-1, -1, 3]}] if task == "token-classification" else
               [{"name": "logits", "dtype": "float16", "shape": [-1, 3]}])
    write_json(directory / "engine.json", {
        "format": ENGINE_FORMAT, "created": "now",
        "plan": {"path": plan.name, "sha256": sha256(plan), "bytes": plan.stat().st_size},
        "onnx": {"path": "/x/model.onnx", "name": "model.onnx", "sha256": "0" * 64},
        "model": "tiny-deberta-v2", "task": task, "config_hash": "abc", "model_version": "v2", "max_sequence": 512,
        "precision": "fp16", "profiles": list(profiles), "plugin": plugin,
        "tensorrt": {"flavour": "tensorrt", "module": "tensorrt", "version": "10.9.0.34"},
        "builder": {}, "inputs": [{"name": n, "dtype": "int64", "shape": [-1, -1]} for n in inputs],
        "outputs": outputs,
    })
    return directory


def test_config_follows_tritons_batch_convention(tmp_path):
    model_dir = export_triton(fake_engine(tmp_path / "engine"), tmp_path / "repo")
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
    assert "tritonserver --model-repository" in readme and "max_batch_size" in readme


def test_several_profiles_and_fp16_outputs(tmp_path):
    profiles = ({"batch": [1, 1, 4], "sequence": [1, 64, 128]}, {"batch": [1, 8, 32], "sequence": [1, 16, 32]})
    engine = fake_engine(tmp_path / "engine", profiles=profiles, task="sequence-classification")
    model_dir = export_triton(engine, tmp_path / "repo", name="classifier", instances=2)
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
    plugin = {"name": spec.OP_TYPE, "namespace": spec.PLUGIN_NAMESPACE, "version": spec.PLUGIN_VERSION, "nodes": 2,
              "library": {"path": str(library_dir / "libdebertrt_plugins.so"), "name": "libdebertrt_plugins.so",
                          "sha256": "0" * 64}}
    model_dir = export_triton(fake_engine(tmp_path / "engine", plugin=plugin), tmp_path / "repo", name="m")
    assert (model_dir / STATIC_PLUGIN_LIBRARY).read_bytes() == b"registers on load"
    parse_config(model_dir / "config.pbtxt")
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert f'--backend-config=tensorrt,plugins="$PWD/m/{STATIC_PLUGIN_LIBRARY}"' in readme
    assert f"LD_PRELOAD=$PWD/m/{STATIC_PLUGIN_LIBRARY}" in readme

    (library_dir / STATIC_PLUGIN_LIBRARY).unlink()
    with pytest.raises(DebertrtError, match=f"dlopen, which needs {STATIC_PLUGIN_LIBRARY}"):
        export_triton(tmp_path / "engine", tmp_path / "repo2", plugin_library=None)


def test_bad_engines_are_refused(tmp_path):
    engine = fake_engine(tmp_path / "a", profiles=({"batch": [2, 4, 8], "sequence": [1, 8, 16]},))
    with pytest.raises(DebertrtError, match="no engine profile starts at batch 1"):
        export_triton(engine, tmp_path / "repo")
    engine = fake_engine(tmp_path / "b")
    (engine / "engine.plan").write_bytes(b"replaced")
    with pytest.raises(DebertrtError, match="sha256 differs"):
        export_triton(engine, tmp_path / "repo")
    with pytest.raises(DebertrtError, match="engine.json not found"):
        export_triton(tmp_path / "nothing", tmp_path / "repo")
    data = json.loads((fake_engine(tmp_path / "c") / "engine.json").read_text())
    data["inputs"][0]["shape"] = [2, -1]
    with pytest.raises(DebertrtError, match="dynamic first"):
        render_config(data, "m")


def test_exporting_again_replaces_the_model(tmp_path):
    engine = fake_engine(tmp_path / "engine")
    export_triton(engine, tmp_path / "repo", name="m")
    (tmp_path / "repo" / "m" / "stale.txt").write_text("old")
    export_triton(engine, tmp_path / "repo", name="m")
    assert not (tmp_path / "repo" / "m" / "stale.txt").exists()


@pytest.mark.skipif(not FLAVOURS["tensorrt-rtx"].available(),
                    reason="TensorRT-RTX is not installed (pip install 'debertrt[rtx]'): no real engine to export")
def test_cli_exports_a_built_engine(exported, tmp_path, capsys):
    onnx_path = exported("tiny-deberta-v3", "sequence-classification", "torchscript")
    build_engine(onnx_path, tmp_path / "engine", EngineOptions(backend="tensorrt-rtx", optimization_level=0,
                                                               profiles=("batch=1:4:8,sequence=1:16:64",)))
    assert main(["export-triton", "--engine", str(tmp_path / "engine"), "--out", str(tmp_path / "repo")]) == 0
    assert "wrote" in capsys.readouterr().out
    model_dir = tmp_path / "repo" / "tiny-deberta-v3-sequence-classification"
    pb2, config = parse_config(model_dir / "config.pbtxt")
    assert config.max_batch_size == 8 and [i.name for i in config.input] == ["input_ids", "attention_mask"]
    assert list(config.output[0].dims) == [3]
    assert sha256(model_dir / "1" / "model.plan") == sha256(tmp_path / "engine" / "engine.plan")
    assert main(["export-triton", "--engine", str(tmp_path / "absent"), "--out", str(tmp_path / "repo")]) == 1
    assert "engine.json not found" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "repo")
