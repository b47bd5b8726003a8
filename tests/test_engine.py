"""Engine builds: profiles and options, TensorRT-RTX ahead-of-time builds of every preset,
engine.json, plugin graphs (either op, small graphs built here) refused for TensorRT-RTX and fused
fp32 graphs refused for TensorRT, the plugin library's creators checked, clear errors.

TensorRT-RTX builds on this CPU machine; full TensorRT needs its own install (and a GPU),
so those tests are skipped with the reason where it is absent.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from debertrt.compiler import engine as engine_module
from debertrt.core.artifacts import read_json, sha256
from debertrt.compiler.cli import main
from debertrt.compiler.engine import EngineOptions, build_engine, inspect_onnx
from debertrt.runtime.engine_json import ENGINE_JSON_KEYS, read_engine_json
from debertrt.runtime.profiles import Profile
from debertrt.runtime.tensorrt import FLAVOURS, Flavour, find_plugin_library
from debertrt.core.errors import DebertrtError
from debertrt.core.models import load_model
from debertrt.plugins import spec

HAS_RTX = FLAVOURS["tensorrt-rtx"].available()
HAS_TRT = FLAVOURS["tensorrt"].available()
requires_rtx = pytest.mark.skipif(not HAS_RTX, reason="TensorRT-RTX is not installed (pip install 'debertrt[rtx]')")
requires_trt = pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (it cannot be on this project's "
                                                      "machines; install TensorRT 10.x/11.x to run this)")

PROFILE = "batch=1:2:4,sequence=1:16:64"
RTX = dict(backend="tensorrt-rtx", profiles=(PROFILE,), optimization_level=0)


def plugin_onnx(path, namespace=spec.PLUGIN_NAMESPACE, version=spec.PLUGIN_VERSION):
    """A one-node graph with a DisentangledAttention node, as the rewrite would emit it."""
    S, span = 8, 4
    shapes = {"c2c": ["batch", 4, S, S], "c2p": ["batch", 4, S, 2 * span], "p2c": ["batch", 4, S, 2 * span]}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    table = numpy_helper.from_array(np.arange(-(S - 1), S, dtype=np.int32), "rel_table")
    attrs = spec.node_attributes(0, S, 1.0, True, True)
    attrs.update(plugin_namespace=namespace, plugin_version=version)
    node = helper.make_node(spec.OP_TYPE, ["c2c", "c2p", "p2c", "rel_table"], ["out"], domain=spec.DOMAIN, **attrs)
    graph = helper.make_graph([node], "plugin", inputs,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, shapes["c2c"])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(spec.DOMAIN, 1)])
    onnx.save(model, str(path))
    return path


def flash_onnx(path, dtype=TensorProto.FLOAT16, gather=False, version=spec.PLUGIN_VERSION):
    """A one-node DisentangledFlashAttention graph as the fused rewrite emits it (and, with ``gather``,
    a DisentangledAttention node beside it: a graph may hold both ops)."""
    H, D, S, P = 2, 64, 8, 4
    inputs = [helper.make_tensor_value_info(n, dtype, ["batch", H, "sequence", D]) for n in ("q", "k", "v")]
    inputs += [helper.make_tensor_value_info(n, dtype, [H, 2 * P, D]) for n in ("pos_key", "pos_query")]
    inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, ["batch", "sequence"]))
    table = numpy_helper.from_array(np.arange(-(S - 1), S, dtype=np.int32), "rel_table")
    attrs = spec.flash_node_attributes(1.0, 0.125, 0.125, True, True, 0, S)
    attrs.update(plugin_version=version)
    nodes = [helper.make_node(spec.FLASH_OP_TYPE, ["q", "k", "v", "pos_key", "pos_query", "mask", "rel_table"],
                              ["context"], domain=spec.DOMAIN, **attrs)]
    outputs = [helper.make_tensor_value_info("context", dtype, ["batch", "sequence", H * D])]
    if gather:
        inputs.append(helper.make_tensor_value_info("c2c", dtype, ["batch", H, S, S]))
        nodes.append(helper.make_node(spec.OP_TYPE, ["c2c", "c2c", "rel_table"], ["scores"], domain=spec.DOMAIN,
                                      **spec.node_attributes(0, S, 1.0, True, False)))
        outputs.append(helper.make_tensor_value_info("scores", dtype, ["batch", H, S, S]))
    graph = helper.make_graph(nodes, "fused", inputs, outputs, [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(spec.DOMAIN, 1)])
    onnx.save(model, str(path))
    return path


def small_graph(path, kind):
    """A tiny [batch, sequence] -> [batch, sequence, 3] graph in fp16 (fp16 weights and compute) or
    int8 (explicit Q/DQ), the two forms calibration/ writes for a strongly typed build."""
    float_type = np.float16 if kind == "fp16" else np.float32
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.random((16, 8)).astype(float_type), "emb"),
             numpy_helper.from_array(np.array([-1], np.int64), "axis")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
             helper.make_node("Cast", ["attention_mask"], ["m"],
                              to=TensorProto.FLOAT16 if kind == "fp16" else TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis"], ["mu"]),
             helper.make_node("Mul", ["h", "mu"], ["hm"])]
    if kind == "fp16":
        inits.append(numpy_helper.from_array(rng.random((8, 3)).astype(np.float16), "w"))
        nodes += [helper.make_node("MatMul", ["hm", "w"], ["l16"]),
                  helper.make_node("Cast", ["l16"], ["logits"], to=TensorProto.FLOAT)]
    else:
        inits += [numpy_helper.from_array(rng.integers(-127, 127, (8, 3)).astype(np.int8), "w"),
                  numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                  numpy_helper.from_array(np.array(0.01, np.float32), "sw")]
        nodes += [helper.make_node("QuantizeLinear", ["hm", "s"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s"], ["dq"]),
                  helper.make_node("DequantizeLinear", ["w", "sw"], ["wd"]),
                  helper.make_node("MatMul", ["dq", "wd"], ["logits"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
              for n in ("input_ids", "attention_mask")]
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 3])
    graph = helper.make_graph(nodes, kind, inputs, [output], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


# ---- profiles and options (no TensorRT needed) -----------------------------------------

def test_profile_parsing():
    p = Profile.parse("batch=1:4:16,sequence=1:128:512")
    assert p.batch == (1, 4, 16) and p.sequence == (1, 128, 512)
    assert str(p) == "batch=1:4:16,sequence=1:128:512"
    assert Profile.parse(str(p)) == p
    assert Profile.parse("batch=8").batch == (8, 8, 8)  # one number: a static dimension
    assert Profile.parse("sequence=1:32:64").batch == Profile().batch  # left out: default
    assert p.shapes() == ((1, 1), (4, 128), (16, 512))
    assert p.contains(16, 512) and not p.contains(17, 1) and not p.contains(1, 513)
    assert Profile().fit_to(64).sequence == (1, 64, 64)


@pytest.mark.parametrize("text, message", [
    ("batch=4:2:1", "min <= opt <= max"),
    ("batch=0:1:2", "min must be >= 1"),
    ("sequence=1:2", "min:opt:max"),
    ("width=1:2:3", "write e.g."),
    ("batch", "write e.g."),
    ("batch=a:b:c", "integers"),
    ("batch=1:1:1,batch=2:2:2", "given twice"),
    ("", "empty profile"),
])
def test_bad_profiles_are_rejected(text, message):
    with pytest.raises(DebertrtError, match=message):
        Profile.parse(text)


def test_options_are_validated():
    with pytest.raises(DebertrtError, match="unknown backend"):
        EngineOptions(backend="onnxruntime")
    with pytest.raises(DebertrtError, match="outside 0..5"):
        EngineOptions(optimization_level=6)
    with pytest.raises(DebertrtError, match="TensorRT-RTX option"):
        EngineOptions(backend="tensorrt", compute_capabilities=("sm86",))
    with pytest.raises(DebertrtError, match="unknown compute capability"):
        EngineOptions(backend="tensorrt-rtx", compute_capabilities=("sm90",))
    options = EngineOptions(backend="tensorrt-rtx", compute_capabilities=("8.6", "sm_89"), profiles=PROFILE)
    assert options.compute_capabilities == ("sm86", "sm89")
    assert options.profiles == (Profile.parse(PROFILE),)
    assert options.in_subprocess and not EngineOptions().in_subprocess


def test_a_missing_module_is_one_line_naming_the_install():
    missing = Flavour("tensorrt", "debertrt_no_such_module", "pip install something", min_major=10,
                      ahead_of_time=False)
    assert not missing.available()
    with pytest.raises(DebertrtError) as info:
        missing.load()
    assert "\n" not in str(info.value) and "TensorRT is not installed" in str(info.value)
    assert "pip install something" in str(info.value)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_building_without_tensorrt_says_how_to_install(exported, tmp_path):
    onnx_path = exported("tiny-deberta-v3", "sequence-classification", "torchscript")
    with pytest.raises(DebertrtError, match="TensorRT is not installed.*pip install"):
        build_engine(onnx_path, tmp_path, EngineOptions(backend="tensorrt", profiles=(PROFILE,)))
    assert not (tmp_path / "engine.plan").exists()


def test_a_profile_longer_than_the_model_is_refused_before_building(exported, tmp_path):
    onnx_path = exported("tiny-deberta-v2", "sequence-classification", "torchscript")  # absolute positions
    with pytest.raises(DebertrtError, match="sequence max 600 exceeds the model's maximum 512"):
        build_engine(onnx_path, tmp_path, EngineOptions(backend="tensorrt-rtx",
                                                        profiles=("batch=1:1:1,sequence=1:16:600",)))


def test_inspect_onnx_reads_precision_plugin_and_manifest(exported, tmp_path):
    info = inspect_onnx(exported("tiny-deberta-v2", "sequence-classification", "torchscript"))
    assert info.precision == "fp32" and info.plugins == [] and info.plugin_nodes == 0
    assert info.export["max_sequence"] == 512 and info.export["inputs"]["task"] == "sequence-classification"
    assert inspect_onnx(small_graph(tmp_path / "a.onnx", "fp16")).precision == "fp16"
    assert inspect_onnx(small_graph(tmp_path / "b.onnx", "int8")).precision == "int8"
    info = inspect_onnx(plugin_onnx(tmp_path / "plugin.onnx"))
    assert info.plugins == [{"name": spec.OP_TYPE, "namespace": spec.PLUGIN_NAMESPACE,
                             "version": spec.PLUGIN_VERSION, "nodes": 1, "dtypes": []}]
    assert info.plugin_nodes == 1


def test_inspect_onnx_lists_every_op_of_the_spec(tmp_path):
    info = inspect_onnx(flash_onnx(tmp_path / "both.onnx", gather=True))
    assert [(p["name"], p["nodes"]) for p in info.plugins] == [(name, 1) for name in spec.OPS]
    assert info.plugins[1] == {"name": spec.FLASH_OP_TYPE, "namespace": spec.PLUGIN_NAMESPACE,
                               "version": spec.PLUGIN_VERSION, "nodes": 1, "dtypes": ["float16"]}
    assert inspect_onnx(flash_onnx(tmp_path / "bf16.onnx", TensorProto.BFLOAT16)).plugins[0]["dtypes"] == ["bfloat16"]
    assert info.plugin_nodes == 2


@pytest.mark.parametrize("graph", [plugin_onnx, flash_onnx])
def test_plugin_nodes_of_another_version_are_refused(tmp_path, graph):
    with pytest.raises(DebertrtError, match="version '7'.*rerun the rewrite"):
        inspect_onnx(graph(tmp_path / "plugin.onnx", version="7"))


def test_a_fused_fp32_graph_is_refused_before_tensorrt(tmp_path):
    """The fused op's TensorRT plugin takes fp16/bf16: an fp32 fused graph is refused with the fix, before
    TensorRT is imported (it is not installed here) and before anything is written."""
    onnx_path = flash_onnx(tmp_path / "model.fused.onnx", TensorProto.FLOAT)
    with pytest.raises(DebertrtError, match="DisentangledFlashAttention nodes are float32, the TensorRT plugin takes "
                                            "float16, bfloat16: build the fp16 graph"):
        build_engine(onnx_path, tmp_path / "out", EngineOptions(backend="tensorrt"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("backend", ["tensorrt", "tensorrt-rtx"])
def test_the_pipeline_gives_tensorrt_the_fused_graphs_it_can_take(tmp_path, monkeypatch, backend):
    """debertrt build: TensorRT builds a precision's plugin graph (fused fp16 here), the plugin-free graph
    where the plugin refuses the graph's dtype (fused fp32), with a note; TensorRT-RTX the plugin-free ones."""
    from debertrt.compiler import pipeline

    built = []

    def record(onnx_path, out_dir, options, name):
        built.append((Path(onnx_path).name, name))
        return Path(out_dir) / f"{name}.plan"

    monkeypatch.setattr(engine_module, "build_engine", record)
    graphs = {"fp32": (small_graph(tmp_path / "model.onnx", "int8"), flash_onnx(tmp_path / "fused.onnx",
                                                                                   TensorProto.FLOAT)),
              "fp16": (small_graph(tmp_path / "model.fp16.onnx", "fp16"), flash_onnx(tmp_path / "fused.fp16.onnx"))}
    plans, notes = pipeline._build_engines(graphs, tmp_path, backend, pipeline.BuildOptions())
    if backend == "tensorrt":
        assert built == [("model.onnx", "engine.fp32"), ("fused.fp16.onnx", "engine.fp16")]
        assert len(notes) == 1 and "engine.fp32 is built from model.onnx" in notes[0] and "float32" in notes[0]
    else:
        assert built == [("model.onnx", "engine.rtx.fp32"), ("model.fp16.onnx", "engine.rtx.fp16")]
    assert [p.name for p in plans] == [f"{name}.plan" for _, name in built]


def test_a_file_that_is_not_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00not a model")
    with pytest.raises(DebertrtError, match="cannot read .* as ONNX"):
        build_engine(bad, tmp_path, EngineOptions(**RTX))
    with pytest.raises(DebertrtError, match="not found"):
        build_engine(tmp_path / "absent.onnx", tmp_path, EngineOptions(**RTX))


def test_a_missing_plugin_library_is_a_clear_error(tmp_path):
    with pytest.raises(DebertrtError, match="plugin library .* not found"):
        find_plugin_library(tmp_path / "libdebertrt_plugins.so")


# ---- TensorRT-RTX: ahead-of-time builds on this machine -------------------------------

BUILDS = [
    ("tiny-deberta", "sequence-classification"),
    ("tiny-deberta-v2", "sequence-classification"),
    ("tiny-deberta-v3", "sequence-classification"),
    ("tiny-deberta-v3", "token-classification"),
    ("tiny-deberta", "question-answering"),
]


@requires_rtx
@pytest.mark.parametrize("preset, task", BUILDS)
def test_rtx_builds_every_preset(exported, tmp_path, preset, task):
    onnx_path = exported(preset, task, "torchscript")
    ref = load_model(preset, task)
    plan = build_engine(onnx_path, tmp_path, EngineOptions(**RTX, timing_cache=tmp_path / "timing.cache"))
    assert plan == tmp_path / "engine.plan" and plan.stat().st_size > 0
    data = read_engine_json(plan)
    assert set(data) == set(ENGINE_JSON_KEYS)
    assert data["format"] == "debertrt-engine/2" and data["created"]
    assert data["plan"] == {"path": "engine.plan", "sha256": sha256(plan), "bytes": plan.stat().st_size}
    assert data["onnx"]["sha256"] == sha256(onnx_path) and data["onnx"]["name"] == "model.onnx"
    assert data["model"] == preset and data["task"] == task
    assert data["config_hash"] == ref.config_hash() and data["model_version"] == ref.version
    assert data["max_sequence"] == ref.max_sequence
    assert data["precision"] == "fp32"
    assert data["profiles"] == [{"batch": [1, 2, 4], "sequence": [1, 16, 64]}]
    assert data["plugins"] == [] and data["plugin_library"] is None
    import tensorrt_rtx_bindings

    assert data["tensorrt"] == {"flavour": "tensorrt-rtx", "module": "tensorrt_rtx_bindings",
                                "version": tensorrt_rtx_bindings.__version__}
    builder = data["builder"]
    assert builder["optimization_level"] == 0 and builder["strongly_typed"] and builder["subprocess"]
    assert builder["compute_capabilities"] is None and builder["workspace_mib"] is None and builder["seconds"] > 0
    assert builder["timing_cache"]["loaded"] is False and "no timing cache" in builder["timing_cache"]["note"]
    assert [t["name"] for t in data["inputs"]] == list(ref.input_names)
    assert all(t["dtype"] == "int64" and t["shape"] == [-1, -1] for t in data["inputs"])
    assert [t["name"] for t in data["outputs"]] == list(ref.output_names)
    assert all(t["dtype"] == "float32" for t in data["outputs"])
    labels = ref.config.num_labels
    expected = {"sequence-classification": [-1, labels], "token-classification": [-1, -1, labels],
                "question-answering": [-1, -1]}[task]
    assert all(t["shape"] == expected for t in data["outputs"])
    stage = read_json(tmp_path / "manifest.json")["stages"]["engine"]
    assert stage["outputs"]["plan"]["sha256"] == sha256(plan)
    assert stage["options"]["backend"] == "tensorrt-rtx"


@requires_rtx
@pytest.mark.filterwarnings("ignore:.*[Tt]iming cache:DeprecationWarning")
def test_the_tensorrt_path_in_process_with_a_timing_cache(exported, tmp_path, monkeypatch):
    """TensorRT's own path (in this process, timing cache read and written), driven through TensorRT-RTX's
    identical API since TensorRT itself cannot be installed here."""
    monkeypatch.setitem(FLAVOURS, "tensorrt", Flavour("tensorrt", "tensorrt_rtx_bindings", "pip install ...",
                                                      min_major=1, ahead_of_time=False))
    onnx_path = exported("tiny-deberta-v3", "sequence-classification", "torchscript")
    cache = tmp_path / "timing.cache"
    options = EngineOptions(backend="tensorrt", profiles=(PROFILE,), optimization_level=0, timing_cache=cache)
    assert not options.in_subprocess
    first = read_engine_json(build_engine(onnx_path, tmp_path / "a", options))
    assert cache.is_file()
    second = read_engine_json(build_engine(onnx_path, tmp_path / "b", options))
    assert first["builder"]["timing_cache"] == {"path": str(cache), "loaded": False, "saved": True}
    assert second["builder"]["timing_cache"] == {"path": str(cache), "loaded": True, "saved": True}
    assert second["builder"]["subprocess"] is False and second["tensorrt"]["flavour"] == "tensorrt"


@requires_rtx
def test_rtx_options_several_profiles_and_compute_capabilities(exported, tmp_path):
    onnx_path = exported("tiny-deberta-v3", "sequence-classification", "torchscript")
    options = EngineOptions(backend="tensorrt-rtx", optimization_level=0, workspace_mib=256,
                            profiles=("batch=1:1:2,sequence=1:8:32", "batch=1:4:8,sequence=16:64:128"),
                            compute_capabilities=("sm86", "sm89"))
    plan = build_engine(onnx_path, tmp_path, options, name="engine.rtx")
    assert plan.name == "engine.rtx.plan"
    data = read_engine_json(plan)
    assert data["profiles"] == [{"batch": [1, 1, 2], "sequence": [1, 8, 32]},
                                {"batch": [1, 4, 8], "sequence": [16, 64, 128]}]
    assert data["builder"]["compute_capabilities"] == ["sm86", "sm89"]
    assert data["builder"]["workspace_mib"] == 256
    assert "engine:engine.rtx" in read_json(tmp_path / "manifest.json")["stages"]


@requires_rtx
def test_the_default_profile_is_clipped_to_the_model(exported, tmp_path):
    onnx_path = exported("tiny-deberta-v2", "sequence-classification", "torchscript")
    plan = build_engine(onnx_path, tmp_path, EngineOptions(backend="tensorrt-rtx", optimization_level=0))
    assert read_engine_json(plan)["profiles"] == [{"batch": [1, 4, 16], "sequence": [1, 128, 512]}]


@requires_rtx
@pytest.mark.parametrize("kind", ["fp16", "int8"])
def test_rtx_builds_strongly_typed_fp16_and_qdq_graphs(tmp_path, kind):
    onnx_path = small_graph(tmp_path / f"model.{kind}.onnx", kind)
    plan = build_engine(onnx_path, tmp_path, EngineOptions(backend="tensorrt-rtx", optimization_level=0,
                                                           profiles=("batch=1:2:4,sequence=1:8:16",)))
    data = read_engine_json(plan)
    assert data["precision"] == kind
    assert data["model"] is None and data["task"] is None  # no export manifest beside a hand-made graph
    assert data["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [-1, -1, 3]}]


@requires_rtx
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_rtx_builds_calibration_artifacts(exported, tmp_path, precision):
    from debertrt.calibration.fp16 import to_fp16
    from debertrt.calibration.int8 import quantize_int8

    onnx_path = exported("tiny-deberta-v3", "sequence-classification", "torchscript")
    work = tmp_path / "work"
    work.mkdir()
    for f in onnx_path.parent.iterdir():
        if f.is_file():
            (work / f.name).write_bytes(f.read_bytes())
    convert = to_fp16 if precision == "fp16" else quantize_int8
    artifact = convert(work / "model.onnx").path
    plan = build_engine(artifact, tmp_path / "engine", EngineOptions(**RTX))
    assert read_engine_json(plan)["precision"] == precision


@requires_rtx
@pytest.mark.parametrize("graph, names", [(plugin_onnx, "1 DisentangledAttention"),
                                          (flash_onnx, "1 DisentangledFlashAttention")])
def test_plugin_graphs_are_refused_for_rtx_before_its_parser_sees_them(tmp_path, graph, names):
    onnx_path = graph(tmp_path / "model.plugin.onnx")
    with pytest.raises(DebertrtError, match=f"plugin nodes \\({names}\\): TensorRT-RTX cannot build plugin layers"):
        build_engine(onnx_path, tmp_path, EngineOptions(**RTX))
    assert not (tmp_path / "engine.plan").exists() and not (tmp_path / "engine.json").exists()


def _built_plugin_library():
    try:
        return find_plugin_library()
    except DebertrtError:
        return None


@requires_rtx
def test_the_plugin_library_loads_and_its_creators_are_checked(tmp_path):
    """With a built libdebertrt_plugins.so: TensorRT-RTX's registry loads it (in a child process, to keep
    its creators out of this one) and load_plugin_library finds the creator of every op, or says which
    versions exist."""
    library = _built_plugin_library()
    if library is None:
        pytest.skip("no libdebertrt_plugins.so built (set DEBERTRT_PLUGIN_LIBRARY, or build plugins/ with "
                    "TensorRT headers): cannot check the plugin library loading")
    code = f"""
import tensorrt_rtx_bindings as trt
from debertrt.runtime.tensorrt import load_plugin_library
from debertrt.core.errors import DebertrtError
plugins = [{{"name": name, "namespace": {spec.PLUGIN_NAMESPACE!r}, "version": {spec.PLUGIN_VERSION!r}}}
           for name in {list(spec.OPS)!r}]
load_plugin_library(trt, {str(library)!r}, plugins, "TensorRT-RTX")
load_plugin_library(trt, {str(library)!r}, plugins, "TensorRT-RTX")  # a second load is a no-op
print("creators found")
try:
    load_plugin_library(trt, {str(library)!r}, [plugins[0], dict(plugins[1], version="99")], "TensorRT-RTX")
except DebertrtError as exc:
    print(exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "creators found" in proc.stdout, proc.stdout
    assert (f"provides version(s) {spec.PLUGIN_VERSION}, but plugin {spec.FLASH_OP_TYPE} version 99"
            in proc.stdout), proc.stdout


@requires_rtx
def test_the_rewritten_plugin_graph_is_refused_for_rtx(exported, tmp_path):
    from debertrt.compiler.rewrite import rewrite

    source = exported("tiny-deberta-v3", "sequence-classification", "torchscript")
    for f in source.parent.iterdir():
        if f.is_file():
            (tmp_path / f.name).write_bytes(f.read_bytes())
    plugin_graph = rewrite(tmp_path / "model.onnx").path
    info = inspect_onnx(plugin_graph)
    assert info.plugin_nodes == 2 and info.plugins[0]["version"] == spec.PLUGIN_VERSION  # one node per layer
    with pytest.raises(DebertrtError, match="has plugin nodes \\(2 DisentangledAttention\\).*TensorRT-RTX cannot"):
        build_engine(plugin_graph, tmp_path, EngineOptions(**RTX))


@requires_rtx
def test_a_parser_error_is_one_clear_line(tmp_path):
    node = helper.make_node("NoSuchOp", ["input_ids"], ["out"], domain="example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("out", TensorProto.INT64, ["b", "s"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("example", 1)]),
              str(tmp_path / "model.onnx"))
    with pytest.raises(DebertrtError, match="could not parse model.onnx.*NoSuchOp") as info:
        build_engine(tmp_path / "model.onnx", tmp_path, EngineOptions(**RTX))
    assert "\n" not in str(info.value)


def test_a_crashed_build_process_is_a_clear_error(tmp_path, monkeypatch):
    """What the user sees if the native library aborts the child (as TensorRT-RTX does on plugin layers)."""
    monkeypatch.setattr(engine_module, "_WORKER_CODE", "import os, resource; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); os.abort()")
    request = {"backend": "tensorrt-rtx", "verbose": False}
    with pytest.raises(DebertrtError, match="TensorRT-RTX build process died with SIGABRT"):
        engine_module._build_in_subprocess(request)


@requires_rtx
def test_rtx_aborting_on_a_plugin_layer_does_not_take_the_caller_down(tmp_path, monkeypatch):
    """The real failure the subprocess guards against: with our creator registered, TensorRT-RTX's parser
    aborts its process on a plugin node. Here the up-front refusal is bypassed on purpose."""
    library = _built_plugin_library()
    if library is None:
        pytest.skip("no libdebertrt_plugins.so built (set DEBERTRT_PLUGIN_LIBRARY): cannot provoke the abort")
    monkeypatch.setattr(engine_module, "_WORKER_CODE", (
        "import sys, resource; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); "
        "import tensorrt_rtx_bindings as trt; "
        f"trt.get_plugin_registry().load_library({str(library)!r}); "
        "from debertrt.compiler.engine import _worker; sys.exit(_worker(sys.argv[1], sys.argv[2]))"))
    request = {"onnx": str(plugin_onnx(tmp_path / "model.plugin.onnx")), "backend": "tensorrt-rtx", "profiles": [],
               "optimization_level": 0, "timing_cache": None, "plugins": [], "plugin_library": None,
               "workspace_mib": None, "compute_capabilities": [], "verbose": False, "plan": str(tmp_path / "x.plan")}
    with pytest.raises(DebertrtError, match="TensorRT-RTX build process died with SIG"):
        engine_module._build_in_subprocess(request)


@requires_rtx
def test_cli_engine_command(exported, tmp_path, capsys):
    onnx_path = exported("tiny-deberta-v3", "sequence-classification", "torchscript")
    assert main(["engine", str(onnx_path), "--backend", "tensorrt-rtx", "--profile", PROFILE,
                 "--optimization-level", "0", "--out", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert read_engine_json(tmp_path)["profiles"][0]["sequence"] == [1, 16, 64]
    assert main(["engine", str(plugin_onnx(tmp_path / "p.onnx")), "--backend", "tensorrt-rtx",
                 "--out", str(tmp_path)]) == 1
    assert "cannot build plugin layers" in capsys.readouterr().err


def test_cli_rejects_bad_profiles_while_parsing(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["engine", str(tmp_path / "model.onnx"), "--profile", "batch=4:2:1"])
    assert info.value.code == 2
    assert "min <= opt <= max" in capsys.readouterr().err


# ---- engine.json reading ---------------------------------------------------------------

def test_engine_json_errors_are_clear(tmp_path):
    with pytest.raises(DebertrtError, match="engine.json not found"):
        read_engine_json(tmp_path)
    (tmp_path / "engine.json").write_text("{ not json")
    with pytest.raises(DebertrtError, match="corrupt"):
        read_engine_json(tmp_path / "engine.plan")
    (tmp_path / "engine.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DebertrtError, match="not a debertrt engine description"):
        read_engine_json(tmp_path)
    (tmp_path / "engine.json").write_text(json.dumps({"format": "debertrt-engine/2", "plan": {}}))
    with pytest.raises(DebertrtError, match="lacks .*profiles"):
        read_engine_json(tmp_path)


# ---- full TensorRT (user machines with TensorRT and a GPU) -----------------------------

@requires_trt
def test_tensorrt_build_with_timing_cache(exported, tmp_path):
    onnx_path = exported("tiny-deberta-v3", "sequence-classification", "torchscript")
    cache = tmp_path / "timing.cache"
    options = EngineOptions(backend="tensorrt", profiles=(PROFILE,), optimization_level=0, timing_cache=cache)
    build_engine(onnx_path, tmp_path / "a", options)
    assert cache.is_file() and read_engine_json(tmp_path / "a")["builder"]["timing_cache"]["loaded"] is False
    build_engine(onnx_path, tmp_path / "b", options)
    data = read_engine_json(tmp_path / "b")
    assert data["builder"]["timing_cache"]["loaded"] is True
    assert data["tensorrt"]["flavour"] == "tensorrt" and data["plugins"] == []
