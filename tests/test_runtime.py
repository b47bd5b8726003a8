"""The Python runtime: engine.json checks on any machine (profiles, versions, plugin, corrupt
files), the TensorRT runner in a parity report ("not run" and why), and, where a GPU and a
TensorRT that can use it exist, real execution against ONNX Runtime."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from debertrt.compiler.engine import EngineOptions, build_engine
from debertrt.runtime.tensorrt import FLAVOURS
from debertrt.core.errors import DebertrtError
from debertrt.core.data import Dataset, random_batch
from debertrt.core.models import load_model
from debertrt.compiler.parity import artifact_precision, check_artifact
from debertrt.compiler.parity_report import render_markdown
from debertrt.runtime.runners import OnnxRuntimeRunner, TensorRTRunner, open_runner
from debertrt.plugins import spec
from debertrt.runtime.engine import Engine, unavailable_reason
from debertrt.runtime.engine_json import EngineMetadata
from debertrt.runtime import engine as runtime_module

# its module/session fixtures are costly: one xdist worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_runtime")

HAS_RTX = FLAVOURS["tensorrt-rtx"].available()
requires_rtx = pytest.mark.skipif(not HAS_RTX, reason="TensorRT-RTX is not installed (pip install 'debertrt[rtx]')")

PRESET, TASK = "tiny-deberta-v2", "sequence-classification"  # three inputs (token_type_ids too)
PROFILES = ("batch=1:1:2,sequence=1:8:32", "batch=1:2:4,sequence=16:32:64")


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def built(exported, tmp_path_factory):
    """An fp32 TensorRT-RTX engine of a preset with two profiles (built once for this module)."""
    if not HAS_RTX:
        pytest.skip("TensorRT-RTX is not installed (pip install 'debertrt[rtx]'): no engine to check")
    onnx_path = exported(PRESET, TASK, "torchscript")
    engine = tmp_path_factory.mktemp("runtime") / "engine"
    build_engine(onnx_path, engine, EngineOptions(backend="tensorrt-rtx", profiles=PROFILES, optimization_level=0))
    return SimpleNamespace(engine=engine, onnx=onnx_path)


@pytest.fixture
def engine_dir(built, tmp_path):
    """A private copy of the built engine, free to corrupt."""
    return shutil.copytree(built.engine, tmp_path / "engine")


def feed(batch, sequence, rng=None):
    return random_batch(load_model(PRESET, TASK), batch, sequence, rng or np.random.default_rng(0))


def edit_json(engine_dir, change):
    path = engine_dir / "engine.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---- engine.json alone: no TensorRT, no GPU --------------------------------------------

def test_shapes_pick_a_profile_or_are_refused(built):
    meta = EngineMetadata(built.engine)
    shape = lambda b, s: {n: (b, s) for n in meta.input_names}  # noqa: E731
    assert meta.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert meta.check_shapes(shape(1, 1)) == 0
    assert meta.check_shapes(shape(2, 32)) == 0
    assert meta.check_shapes(shape(3, 40)) == 1
    with pytest.raises(DebertrtError, match="sequence length 65 exceeds the engine's maximum 64"):
        meta.check_shapes(shape(1, 65))
    with pytest.raises(DebertrtError, match="batch size 5 exceeds the engine's maximum 4"):
        meta.check_shapes(shape(5, 8))
    with pytest.raises(DebertrtError, match="batch 3 x sequence 8 is outside every optimization profile"):
        meta.check_shapes(shape(3, 8))
    with pytest.raises(DebertrtError, match=r"inputs \['token_type_ids'\] are missing"):
        meta.check_shapes({"input_ids": (1, 4), "attention_mask": (1, 4)})
    with pytest.raises(DebertrtError, match="disagree"):
        meta.check_shapes({"input_ids": (1, 4), "attention_mask": (1, 5), "token_type_ids": (1, 4)})
    with pytest.raises(DebertrtError, match=r"takes \[batch, sequence\]"):
        meta.check_shapes({n: (1, 4, 1) for n in meta.input_names})


def test_a_longer_sequence_is_refused_before_any_device_work(built, monkeypatch):
    def no_device_work(self):
        raise AssertionError("activate() ran: the shape check came too late")

    monkeypatch.setattr(Engine, "activate", no_device_work)
    engine = Engine(built.engine / "engine.plan")
    with pytest.raises(DebertrtError, match="sequence length 100 exceeds the engine's maximum 64.*--profile"):
        engine.infer(feed(1, 100))
    with pytest.raises(AssertionError, match="activate"):
        engine.infer(feed(1, 10))  # a shape that fits goes on to the device


@pytest.mark.skipif(_cuda(), reason="a CUDA GPU is present")
def test_without_a_gpu_the_engine_says_so(built):
    engine = Engine(built.engine)
    with pytest.raises(DebertrtError, match="need a CUDA GPU"):
        engine.infer(feed(1, 10))
    assert unavailable_reason(engine.metadata) == "no CUDA GPU"


@pytest.mark.skipif(_cuda(), reason="a CUDA GPU is present")
def test_parity_reports_the_engine_as_not_run_with_the_reason(built):
    ref = load_model(PRESET, TASK)
    plan = built.engine / "engine.plan"
    assert artifact_precision(plan) == "fp32"
    runner = open_runner(plan, ref.max_sequence)
    assert isinstance(runner, TensorRTRunner) and runner.runtime.startswith("tensorrt-rtx-")
    dataset = Dataset([feed(2, 16)])
    entry = check_artifact(ref, plan, dataset, reference=[])
    assert entry["status"] == "not run" and entry["reason"] == "no CUDA GPU" and entry["verdict"] == "not judged"
    assert entry["precision"] == "fp32" and entry["runtime"] == runner.runtime
    result = {"model": PRESET, "task": TASK, "data": dataset.describe(), "verdict": "not judged",
              "counts": {"not judged": 1}, "artifacts": [entry]}
    assert "not run: no CUDA GPU" in render_markdown(result)


def test_gpus_tensorrt_rtx_runs_on(built):
    meta = EngineMetadata(built.engine)
    runs_on = runtime_module._rtx_runs_on
    assert runs_on(meta, (8, 6)) and runs_on(meta, (8, 9)) and runs_on(meta, (12, 0)) and runs_on(meta, (8, 0))
    assert not runs_on(meta, (9, 0)) and not runs_on(meta, (10, 0)) and not runs_on(meta, (7, 5))
    meta.data["builder"]["compute_capabilities"] = ["sm75"]
    assert runs_on(meta, (7, 5)) and not runs_on(meta, (8, 6))


def test_a_missing_tensorrt_is_the_reason(engine_dir):
    if FLAVOURS["tensorrt"].available():
        pytest.skip("TensorRT is installed here")
    edit_json(engine_dir, lambda d: d["tensorrt"].update(flavour="tensorrt", module="tensorrt", version="10.9.0"))
    assert unavailable_reason(EngineMetadata(engine_dir)).startswith("TensorRT is not installed")
    with pytest.raises(DebertrtError, match="TensorRT is not installed"):
        Engine(engine_dir).activate()


# ---- corrupt or mismatched artifacts ---------------------------------------------------

def test_a_corrupt_plan_is_a_clear_error(engine_dir):
    plan = engine_dir / "engine.plan"
    plan.write_bytes(plan.read_bytes()[:1000])
    with pytest.raises(DebertrtError, match="does not match engine.json.*corrupt"):
        Engine(plan)
    plan.unlink()
    with pytest.raises(DebertrtError, match="engine.plan not found"):
        Engine(engine_dir)


def test_a_corrupt_or_missing_engine_json_is_a_clear_error(engine_dir, built):
    (engine_dir / "engine.json").write_text('{"format": "debertrt-engine/1", "plan": ')
    with pytest.raises(DebertrtError, match="engine.json is corrupt"):
        Engine(engine_dir)
    with pytest.raises(DebertrtError, match="engine.json is corrupt"):
        open_runner(engine_dir / "engine.plan", load_model(PRESET, TASK))
    (engine_dir / "engine.json").unlink()
    with pytest.raises(DebertrtError, match="engine.json not found"):
        Engine(engine_dir / "engine.plan")
    with pytest.raises(DebertrtError, match="engine.json not found"):
        artifact_precision(engine_dir / "engine.plan")


@requires_rtx
def test_a_tensorrt_version_mismatch_is_refused(engine_dir):
    edit_json(engine_dir, lambda d: d["tensorrt"].update(version="0.9.0"))
    with pytest.raises(DebertrtError, match="built with TensorRT-RTX 0.9.0 but .* is installed.*rebuild"):
        Engine(engine_dir).activate()


def _plugin_entries(version=spec.PLUGIN_VERSION, library="/nonexistent/libdebertrt_plugins.so") -> dict:
    """engine.json's plugin keys for an engine using both ops."""
    return {"plugins": [{"name": op.op_type, "namespace": op.plugin_namespace, "version": version, "nodes": 2}
                        for op in spec.OPS.values()],
            "plugin_library": {"path": library, "name": "libdebertrt_plugins.so", "sha256": "0" * 64}}


def test_a_plugin_version_mismatch_is_refused(engine_dir, monkeypatch):
    monkeypatch.delenv("DEBERTRT_PLUGIN_LIBRARY", raising=False)
    edit_json(engine_dir, lambda d: d.update(_plugin_entries(version="2")))
    with pytest.raises(DebertrtError, match=f"plugin {spec.OP_TYPE} 'debertrt' version 2, this debertrt provides "
                                            f"{spec.OP_TYPE} 'debertrt' version 1; {spec.FLASH_OP_TYPE}"):
        Engine(engine_dir)


def test_every_recorded_plugin_op_is_checked(engine_dir, monkeypatch):
    monkeypatch.delenv("DEBERTRT_PLUGIN_LIBRARY", raising=False)

    def unknown_second_op(data):
        data.update(_plugin_entries())
        data["plugins"][1]["name"] = "DisentangledSomethingElse"

    edit_json(engine_dir, unknown_second_op)
    with pytest.raises(DebertrtError, match="uses plugin DisentangledSomethingElse .*rebuild the engine"):
        Engine(engine_dir)


def test_a_missing_plugin_library_is_refused(engine_dir, tmp_path):
    edit_json(engine_dir, lambda d: d.update(_plugin_entries()))
    with pytest.raises(DebertrtError, match="plugin library .* not found"):
        Engine(engine_dir, plugin_library=tmp_path / "libdebertrt_plugins.so")
    fake = tmp_path / "libdebertrt_plugins.so"
    fake.write_bytes(b"")
    assert Engine(engine_dir, plugin_library=fake).plugin_library == fake.resolve()


def test_first_format_engine_json_is_read_as_the_current_one(engine_dir, tmp_path, monkeypatch):
    """engine.json files written before the plugin list (one "plugin" entry, its library inside) still load."""
    monkeypatch.delenv("DEBERTRT_PLUGIN_LIBRARY", raising=False)
    library = tmp_path / "libdebertrt_plugins.so"
    library.write_bytes(b"")
    gather = {"name": spec.OP_TYPE, "namespace": spec.PLUGIN_NAMESPACE, "version": spec.PLUGIN_VERSION, "nodes": 2}

    def first_format(data):
        data["format"] = "debertrt-engine/1"
        del data["plugins"], data["plugin_library"]
        data["plugin"] = {**gather, "library": {"path": str(library), "name": library.name, "sha256": "0" * 64}}

    edit_json(engine_dir, first_format)
    meta = EngineMetadata(engine_dir)
    assert meta.plugins == [gather] and meta.plugin_library["path"] == str(library)
    assert Engine(engine_dir).plugin_library == library.resolve()  # the recorded library, as before
    edit_json(engine_dir, lambda d: d.update(plugin=None))  # a plugin-free first-format file
    assert EngineMetadata(engine_dir).plugins == [] and EngineMetadata(engine_dir).plugin_library is None
    edit_json(engine_dir, lambda d: d.update(plugin="DisentangledAttention"))  # neither format
    with pytest.raises(DebertrtError, match="not a debertrt engine description"):
        EngineMetadata(engine_dir)


# ---- execution (a GPU and a TensorRT that can use it) ----------------------------------

@pytest.mark.parametrize("cuda_graph", [False, True])
def test_engine_matches_onnxruntime_on_a_gpu(built, cuda_graph):
    meta = EngineMetadata(built.engine)
    reason = unavailable_reason(meta)
    if reason:
        pytest.skip(f"cannot run the TensorRT-RTX engine here: {reason}")
    rng = np.random.default_rng(3)
    with Engine(built.engine, cuda_graph=cuda_graph) as engine, OnnxRuntimeRunner(built.onnx) as ort:
        for batch, sequence in ((1, 7), (2, 32), (3, 50), (2, 32)):
            f = feed(batch, sequence, rng)
            got, expected = engine.infer(f), ort.infer(f)
            np.testing.assert_allclose(got["logits"], expected["logits"], atol=1e-3)
