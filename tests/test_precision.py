"""fp16 and int8 artifacts of the tiny *trained* DeBERTa-v3: placement, accuracy, errors, CLI, parity.

Session fixtures export the trained preset once and convert it once; the tests then read
those artifacts (and write their own variants into ``tmp_path``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from debertrt.calibration import graph as G
from debertrt.calibration.fp16 import to_fp16
from debertrt.calibration.graph import report_paths
from debertrt.calibration.int8 import accuracy_fallback, check_placement, quantize_int8
from debertrt.calibration.options import Int8Options
from debertrt.core import onnx_utils as ox
from debertrt.core import trained
from debertrt.core.data import Dataset, text_dataset
from debertrt.core.errors import DebertrtError
from debertrt.plugins.graph_types import elem_types

# its module/session fixtures are costly: one xdist worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_precision")

TASK = "sequence-classification"
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ref():
    return trained.load(TASK)


@pytest.fixture(scope="session")
def export_dir(ref, tmp_path_factory):
    from debertrt.compiler.export import ExportOptions, export

    out = tmp_path_factory.mktemp("trained-export")
    export(ref, out, ExportOptions(validate=False))
    return out


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory):
    """Calibration text from the task's own distribution (a seed the eval set does not use)."""
    return trained.write_examples(tmp_path_factory.mktemp("data") / "calib.jsonl", 128, seed=99)


@pytest.fixture(scope="session")
def calib(ref, calib_file):
    return text_dataset(ref, calib_file, batch_size=16)


@pytest.fixture(scope="session")
def fp16_model(export_dir, ref, calib):
    return to_fp16(export_dir / "model.onnx", dataset=calib, ref=ref).path


@pytest.fixture(scope="session")
def int8_model(export_dir, ref, calib):
    return quantize_int8(export_dir / "model.onnx", dataset=calib, ref=ref).path


@pytest.fixture(scope="session")
def torch_outputs(ref):
    from debertrt.runtime.runners import TorchRunner

    with TorchRunner(ref) as runner:
        return [runner.infer(b) for b in ref.own_data("parity").batches]


def ort_outputs(path, dataset):
    from debertrt.runtime.runners import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path) as runner:
        return [runner.infer(b) for b in dataset.batches]


def accuracy(outputs, labels):
    return float(np.mean(np.concatenate([o["logits"].argmax(-1) == y for o, y in zip(outputs, labels)])))


def types_of(model):
    return elem_types(model)


def produced_by(model):
    return ox.producers(model.graph)


# ----------------------------------------------------------------------------- fp16


def test_fp16_graph_is_type_consistent_with_fp32_islands(export_dir, fp16_model):
    onnx.checker.check_model(str(fp16_model), full_check=True)
    src, m = onnx.load(str(export_dir / "model.onnx")), onnx.load(str(fp16_model))
    io = lambda g: [(v.name, v.type.tensor_type.elem_type) for v in list(g.input) + list(g.output)]  # noqa: E731
    assert io(m.graph) == io(src.graph), "graph inputs/outputs keep their names and types"
    assert any(i.data_type == FLOAT16 for i in m.graph.initializer)
    types = types_of(m)
    for node in m.graph.node:
        float_io = {types.get(n) for n in list(node.input) + list(node.output) if types.get(n) in (FLOAT, FLOAT16)}
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert float_io == {FLOAT}, f"{node.op_type} {node.name} must run in fp32, has {float_io}"
        if node.op_type == "Where" and any(types.get(n) in (FLOAT, FLOAT16) for n in node.output):
            consts = [i for i in m.graph.initializer if i.name in node.input]
            if any(np.abs(numpy_helper.to_array(c).astype(np.float64)).max() > 65504 for c in consts):
                assert float_io == {FLOAT}, "masked_fill with finfo.min must stay fp32"
        if node.op_type == "MatMul":
            assert types[node.output[0]] in (FLOAT, FLOAT16)
    # Casts only at island borders: never fp16 -> fp32 -> fp16 (or back) in a row
    producer = produced_by(m)
    for node in m.graph.node:
        if node.op_type == "Cast":
            up = producer.get(node.input[0])
            assert not (up is not None and up.op_type == "Cast" and types.get(up.input[0]) == types.get(node.output[0])
                        and types.get(up.input[0]) in (FLOAT, FLOAT16)), f"redundant cast pair at {node.name}"
    heavy = [n for n in m.graph.node if n.op_type in ("MatMul", "Gemm")]
    in_fp16 = [n for n in heavy if types[n.output[0]] == FLOAT16]
    assert len(in_fp16) >= len(heavy) - 1, "all MatMuls but the output head run in fp16"


def test_fp16_report_says_what_stayed_fp32_and_why(fp16_model):
    from debertrt.core.artifacts import read_json

    report = read_json(fp16_model.with_name("model.fp16.json"))
    kinds = report["summary"]["fp32_by_kind"]
    for kind in ("op", "index-arithmetic", "softmax-input", "output"):
        assert kind in kinds, f"no {kind} island in {kinds}"
    masked = [k for k in report["fp32_nodes"] if k["op"] == "Where" and k["kind"] != "index-arithmetic"]
    assert masked and all(k["kind"] in ("softmax-input", "constant-range") for k in masked)
    ops = {k["op"] for k in report["fp32_nodes"]}
    assert {"LayerNormalization", "Softmax", "Log"} <= ops
    assert report["largest_activations"][0]["max_abs"] > 1e38 and report["largest_activations"][0]["fp32"]
    md = fp16_model.with_name("model.fp16.md").read_text()
    assert "Kept in fp32" in md and "LayerNormalization" in md
    manifest = read_json(fp16_model.parent / "manifest.json")
    assert manifest["stages"]["fp16"]["outputs"]["model"]["path"] == "model.fp16.onnx"


def test_fp16_matches_pytorch_fp32(ref, fp16_model, torch_outputs):
    got = ort_outputs(fp16_model, ref.own_data("parity"))
    err = max(float(np.abs(g["logits"] - t["logits"]).max()) for g, t in zip(got, torch_outputs))
    agree = float(np.mean(np.concatenate([g["logits"].argmax(-1) == t["logits"].argmax(-1)
                                          for g, t in zip(got, torch_outputs)])))
    print(f"fp16 vs PyTorch fp32 on {len(ref.own_data('parity'))} held-out examples: max abs {err:.4g}, "
          f"argmax agreement {agree:.2%}")
    assert err <= 1e-2
    assert agree >= 0.99


def test_fp16_islands_follow_measured_ranges(tmp_path):
    """A tensor whose calibration magnitude exceeds the threshold keeps its producer and consumers in fp32."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 8)).astype(np.float32)
    big = (rng.normal(size=(8, 8)) * 20000).astype(np.float32)    # |h| reaches ~1e5 > 65504
    small = (rng.normal(size=(8, 3)) * 2e-5).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["x"], name="embed"),
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="down"),
        helper.make_node("Tanh", ["y"], ["t"], name="tanh"),
        helper.make_node("ReduceMean", ["t"], ["logits"], name="pool", axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("logits", FLOAT, ["b", 3])],
        [numpy_helper.from_array(a, n) for a, n in ((emb, "emb"), (big, "w1"), (small, "w2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "model.onnx"
    onnx.save(model, str(src))
    ids = rng.integers(0, 20, size=(4, 6))
    data = Dataset([{"input_ids": ids, "attention_mask": np.ones_like(ids)}])
    out = to_fp16(src, dataset=data).path
    from debertrt.core.artifacts import read_json

    report = read_json(out.with_name("model.fp16.json"))
    reasons = {k["node"]: k["kind"] for k in report["fp32_nodes"]}
    assert reasons.get("up") == "measured-range" and reasons.get("relu") == "measured-range"
    assert reasons.get("down") == "measured-range", "consumers of an out-of-range tensor stay fp32 too"
    assert "embed" not in reasons and "tanh" not in reasons
    conv = onnx.load(str(out))
    assert types_of(conv)["x"] == FLOAT16 and types_of(conv)["t"] == FLOAT16
    sess_ref = G.session(model, tmp_path)
    sess = G.session(conv, tmp_path)
    feed = data.batches[0]
    want, got = sess_ref.run(None, feed)[0], sess.run(None, feed)[0]
    assert np.isfinite(got).all() and np.abs(want - got).max() < 1e-2


def rtx_build(path: Path, out_dir: Path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX bindings are not installed")
    from debertrt.compiler.engine import EngineOptions, build_engine

    return build_engine(path, out_dir, EngineOptions(backend="tensorrt-rtx",
                                                     profiles=("batch=1:4:8,sequence=1:32:64",)))


@pytest.mark.parametrize("which", ["fp16", "int8"])
def test_artifacts_build_with_tensorrt_rtx(which, fp16_model, int8_model, tmp_path):
    """Strongly typed network from the ONNX parser, build_serialized_network (ahead of time, no GPU)."""
    plan = rtx_build(fp16_model if which == "fp16" else int8_model, tmp_path)
    assert plan.is_file() and plan.stat().st_size > 0
    from debertrt.core.artifacts import read_json

    assert read_json(plan.with_suffix(".json"))["precision"] == which


# ----------------------------------------------------------------------------- int8


def assert_qdq_placement(model, expect_quantized: int | None = None):
    """Independent of ``check_placement``: every Q feeds DQs, every DQ feeds MatMul/Gemm only,
    weights are int8 per-channel on the output axis with zero point 0, nothing touches
    Softmax / LayerNormalization / Add / DisentangledAttention."""
    graph = model.graph
    consumer, producer = ox.consumers(graph), ox.producers(graph)
    inits = ox.initializer_map(graph)
    quantized = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            assert {u.op_type for u in consumer[node.output[0]]} == {"DequantizeLinear"}
            src = producer.get(node.input[0])
            assert src is None or src.op_type not in ("DisentangledAttention", "QuantizeLinear", "DequantizeLinear")
        if node.op_type == "DequantizeLinear":
            users = consumer[node.output[0]]
            assert users and all(u.op_type in ("MatMul", "Gemm") for u in users), \
                f"{node.name} feeds {[u.op_type for u in users]}"
            zp = numpy_helper.to_array(inits[node.input[2]])
            assert zp.dtype == np.int8 and not zp.any(), "symmetric int8"
            if node.input[0] in inits:
                w = inits[node.input[0]]
                assert w.data_type == TensorProto.INT8
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                for u in users:
                    trans_b = next((a.i for a in u.attribute if a.name == "transB"), 0)
                    assert u.input[1] == node.output[0]
                    assert axis == (0 if u.op_type == "Gemm" and trans_b else 1)
                    n_out = w.dims[axis]
                    assert list(inits[node.input[1]].dims) == [n_out], "per-channel scales"
            for u in users:
                quantized.add(u.name)
    for node in graph.node:
        if node.op_type in ("Softmax", "LayerNormalization", "Add", "DisentangledAttention", "Where"):
            for name in node.input:
                up = producer.get(name)
                assert up is None or up.op_type not in ("QuantizeLinear", "DequantizeLinear"), \
                    f"{node.op_type} {node.name} reads a Q/DQ output"
    if expect_quantized is not None:
        assert len(quantized) == expect_quantized
    for name in quantized:  # both inputs of a quantized MatMul come through DQ
        node = next(n for n in graph.node if n.name == name)
        assert all(producer[i].op_type == "DequantizeLinear" for i in node.input[:2])
    return quantized


def test_int8_qdq_sits_only_on_matmul_inputs(int8_model, export_dir):
    model = onnx.load(str(int8_model))
    onnx.checker.check_model(str(int8_model), full_check=True)
    src = onnx.load(str(export_dir / "model.onnx"))
    inits = {i.name for i in src.graph.initializer}
    weight_matmuls = [n for n in src.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]
    bmm = [n for n in src.graph.node if n.op_type == "MatMul" and not set(n.input) & inits]
    quantized = assert_qdq_placement(model)
    assert quantized <= {n.name for n in weight_matmuls}, "activation x activation MatMuls stay float by default"
    assert not quantized & {n.name for n in bmm}
    print(f"{len(quantized)} of {len(weight_matmuls)} weight MatMul/Gemm quantized; {len(bmm)} bmm left float")
    check_placement(model)


def test_int8_task_metric_within_budget_of_fp32(ref, int8_model, torch_outputs):
    from debertrt.core.artifacts import read_json

    report = read_json(report_paths(int8_model)[0])
    s = report["summary"]
    assert s["metric"] == "accuracy" and s["within_budget"]
    got = ort_outputs(int8_model, ref.own_data("parity"))
    fp32_acc = accuracy(torch_outputs, ref.own_data("parity").labels)
    int8_acc = accuracy(got, ref.own_data("parity").labels)
    print(f"held-out accuracy: PyTorch fp32 {fp32_acc:.4f}, int8 (ORT) {int8_acc:.4f}; "
          f"left in float: {s['float_groups'] or 'none'}")
    assert int8_acc >= fp32_acc * (1 - 0.01)
    # the fallback scored the preset's fallback set, never the parity set judged above
    fallback_set = ref.own_data("fallback")
    assert report["data"]["fallback"]["seed"] == trained.HELD_OUT["fallback"][0] != trained.HELD_OUT["parity"][0]
    assert s["fp32"] == pytest.approx(accuracy(ort_outputs(export_dir_model(int8_model), fallback_set),
                                               fallback_set.labels))
    assert s["int8"] == pytest.approx(accuracy(ort_outputs(int8_model, fallback_set), fallback_set.labels))


def export_dir_model(artifact: Path) -> Path:
    return artifact.with_name("model.onnx")


def test_fallback_algorithm_removes_the_most_harmful_groups_first():
    """Unit test with a fake metric: group "b" costs most, then "c"; "a" is harmless."""
    cost = {"a": 0.0, "b": 0.04, "c": 0.02}
    groups = {g: [g + "1", g + "2"] for g in cost}

    class Scorer:
        metric, fp32, calls = "accuracy", (0.90, 0.0), 0

        def __call__(self, nodes):
            self.calls += 1
            quantized = {n[0] for n in nodes}
            loss = sum(cost[g] for g in quantized)
            return 0.90 - loss, loss

    scorer = Scorer()
    model, record = accuracy_fallback(lambda nodes: nodes, groups, scorer, max_loss=0.03)
    assert record["excluded"] == ["b"] and record["within_budget"]     # 0.90 - 0.02 >= 0.873
    assert sorted(model) == ["a1", "a2", "c1", "c2"]
    model, record = accuracy_fallback(lambda nodes: nodes, groups, scorer, max_loss=0.0)
    assert record["excluded"] == ["b", "c"] and model == ["a1", "a2"]
    model, record = accuracy_fallback(lambda nodes: nodes, groups, scorer, max_loss=None)
    assert record["excluded"] == [] and len(model) == 6


@pytest.mark.parametrize("metric", ["accuracy", "agreement"])
def test_int8_fallback_restores_a_poorly_calibrated_model(metric, ref, export_dir, tmp_path):
    """Ranges from two 3-word sentences clip real activations: the fully quantized model loses
    accuracy; the fallback measures each layer group (on its own held-out set, not parity's) and
    leaves the most harmful in float."""
    poor = Dataset([trained.encode(ref.tokenizer, ["d0 b d0", "d1 b d1"])], source="two short sentences")
    scoring = ref.own_data("fallback") if metric == "accuracy" else \
        Dataset(ref.own_data("fallback").batches, labels=None, source="held-out set, labels dropped")
    out = quantize_int8(export_dir / "model.onnx", tmp_path / "model.int8.onnx", poor, ref=ref,
                        fallback_dataset=scoring, options=Int8Options(max_accuracy_loss=0.01)).path
    from debertrt.core.artifacts import read_json

    report = read_json(report_paths(out)[0])
    f, s = report["fallback"], report["summary"]
    print(f"{metric}: fp32 {f['fp32']:.4f}, all int8 {f['full']['metric']:.4f}, final {f['final']:.4f}; "
          f"left in float: {s['float_groups']}; sensitivity " +
          ", ".join(f"{g} {v['metric_without']:.4f}" for g, v in f.get("sensitivity", {}).items()))
    assert s["metric"] == metric
    assert f["full"]["metric"] < f["budget"], "poor calibration should cost more than the budget"
    assert f["excluded"] and set(f["sensitivity"]) == set(f["groups"])
    assert f["within_budget"] and f["final"] >= f["fp32"] * 0.99
    best = max(f["sensitivity"], key=lambda g: f["sensitivity"][g]["metric_without"])
    assert f["excluded"][0] == best, "the most harmful group goes first"
    model = onnx.load(str(out))
    quantized = assert_qdq_placement(model)
    groups = {l["group"]: l for l in report["layers"]}
    for group in f["excluded"]:
        assert groups[group]["quantized"] == 0 and groups[group]["precision"] == "fp32"
    assert s["quantized_matmuls"] == len(quantized) > 0
    md = report_paths(out)[1].read_text()
    assert "Left in higher precision: " + ", ".join(s["float_groups"]) in md


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_int8_calibration_methods(method, ref, export_dir, calib, tmp_path):
    out = quantize_int8(export_dir / "model.onnx", tmp_path / "model.int8.onnx", calib, method, ref=ref,
                        options=Int8Options(max_accuracy_loss=None)).path
    from debertrt.core.artifacts import read_json

    s = read_json(report_paths(out)[0])["summary"]
    print(f"{method}: accuracy fp32 {s['fp32']:.4f}, int8 {s['int8']:.4f}")
    assert s["method"] == method
    assert_qdq_placement(onnx.load(str(out)), expect_quantized=s["candidate_matmuls"])
    assert s["int8"] >= s["fp32"] - 0.05


# ----------------------------------------------------------------------------- plugin graph


@pytest.fixture(scope="session")
def plugin_model(export_dir):
    from debertrt.compiler.rewrite import rewrite

    return rewrite(export_dir / "model.onnx").path


def test_plugin_graph_gets_the_same_qdq_and_none_on_the_plugin(plugin_model, int8_model, calib, ref, tmp_path):
    out = quantize_int8(plugin_model, tmp_path / "model.plugin.int8.onnx", calib, ref=ref,
                        options=Int8Options(max_accuracy_loss=None)).path
    model = onnx.load(str(out))
    plugins = [n for n in model.graph.node if n.op_type == "DisentangledAttention"]
    assert len(plugins) == ref.config.num_hidden_layers
    quantized = assert_qdq_placement(model)
    plain = assert_qdq_placement(onnx.load(str(int8_model)))
    assert len(quantized) == len(plain) or len(quantized) >= len(plain), "same weight MatMuls quantized"
    producer, consumer = ox.producers(model.graph), ox.consumers(model.graph)
    for node in plugins:
        for name in node.input:
            up = producer.get(name)
            assert up is None or up.op_type not in ("QuantizeLinear", "DequantizeLinear")
        for user in consumer[node.output[0]]:
            assert user.op_type not in ("QuantizeLinear", "DequantizeLinear")
    got = ort_outputs(out, ref.own_data("parity"))
    acc = accuracy(got, ref.own_data("parity").labels)
    print(f"plugin int8 accuracy {acc:.4f}")
    assert acc >= 0.95


def test_plugin_graph_fp16_keeps_the_plugin_in_the_fp32_score_island(plugin_model, calib, ref, tmp_path,
                                                                     torch_outputs):
    out = to_fp16(plugin_model, tmp_path / "model.plugin.fp16.onnx", calib, ref=ref).path
    model = onnx.load(str(out))
    types = types_of(model)
    plugins = [n for n in model.graph.node if n.op_type == "DisentangledAttention"]
    assert plugins and all(types[n.output[0]] == FLOAT and types[n.input[0]] == FLOAT for n in plugins)
    producer = produced_by(model)
    assert all(producer[n.input[0]].op_type == "Cast" for n in plugins), "fp16 scores are cast up exactly"
    got = ort_outputs(out, ref.own_data("parity"))
    err = max(float(np.abs(g["logits"] - t["logits"]).max()) for g, t in zip(got, torch_outputs))
    print(f"plugin fp16 vs PyTorch fp32: max abs {err:.4g}")
    assert err <= 1e-2


# ----------------------------------------------------------------------------- bad data


def test_empty_or_malformed_calibration_data_is_refused(ref, export_dir, tmp_path):
    src = export_dir / "model.onnx"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    with pytest.raises(DebertrtError, match="no examples"):
        text_dataset(ref, empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "d1 b d2"}\n{"text": oops}\n')
    with pytest.raises(DebertrtError, match="not valid JSON"):
        text_dataset(ref, bad)
    ids = np.array([[1, 5, 6]])
    cases = {
        "empty": Dataset([]),
        "missing input": Dataset([{"input_ids": ids}]),
        "float ids": Dataset([{"input_ids": ids.astype(np.float32), "attention_mask": np.ones_like(ids)}]),
        "out of vocabulary": Dataset([{"input_ids": ids + 1000, "attention_mask": np.ones_like(ids)}]),
        "shape mismatch": Dataset([{"input_ids": ids, "attention_mask": np.ones((1, 4), np.int64)}]),
        "bad mask": Dataset([{"input_ids": ids, "attention_mask": ids}]),
    }
    for what, data in cases.items():
        for convert in (lambda d: quantize_int8(src, tmp_path / "x.int8.onnx", d, ref=ref),
                        lambda d: to_fp16(src, tmp_path / "x.fp16.onnx", d, ref=ref)):
            with pytest.raises(DebertrtError):
                convert(data)
    assert not list(tmp_path.glob("x.*")), "nothing written on failure"


@pytest.fixture(scope="session")
def overflowing_dir(export_dir, tmp_path_factory):
    """The export with one weight scaled so that a MatMul overflows to inf in fp32."""
    out = tmp_path_factory.mktemp("overflow")
    shutil.copy(export_dir / "manifest.json", out / "manifest.json")
    model = onnx.load(str(export_dir / "model.onnx"))
    inits = ox.initializer_map(model.graph)
    consumer = ox.consumers(model.graph)
    name = next(i.name for i in model.graph.initializer if len(i.dims) == 2 and
                any(c.op_type == "MatMul" for c in consumer.get(i.name, [])))
    arr = np.sign(numpy_helper.to_array(inits[name])) * np.float32(3e38)   # finite weights, inf sums
    inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))
    onnx.save(model, str(out / "model.onnx"))
    return out


def test_non_finite_activations_are_refused(overflowing_dir, ref, calib):
    src = overflowing_dir / "model.onnx"
    with pytest.raises(DebertrtError, match="inf|NaN"):
        quantize_int8(src, dataset=calib, ref=ref)
    with pytest.raises(DebertrtError, match="inf|NaN"):
        to_fp16(src, dataset=calib, ref=ref)
    assert not (overflowing_dir / "model.int8.onnx").exists() and not (overflowing_dir / "model.fp16.onnx").exists()


# ----------------------------------------------------------------------------- CLI + parity


def test_cli_calibrate_errors_exit_nonzero_without_partial_files(overflowing_dir, export_dir, tmp_path, capsys):
    from debertrt.compiler.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "model.int8.onnx"
    assert main(["calibrate", str(export_dir / "model.onnx"), "--precision", "int8", "--data", str(empty),
                 "--out", str(out)]) == 1
    assert "no examples" in capsys.readouterr().err
    assert main(["calibrate", str(overflowing_dir / "model.onnx"), "--precision", "int8"]) == 1
    assert "inf" in capsys.readouterr().err
    assert main(["calibrate", str(overflowing_dir / "model.onnx"), "--precision", "fp16"]) == 1
    assert not out.exists() and not list(overflowing_dir.glob("model.*.onnx"))
    assert not [p for p in overflowing_dir.iterdir() if p.name.startswith(".")], "no temporary files left"
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", str(export_dir / "model.onnx"), "--precision", "int8", "--max-accuracy-loss", "2"])
    assert exc.value.code == 2


def test_cli_calibrate_then_parity_with_the_task_metric(export_dir, calib_file, tmp_path, capsys):
    from debertrt.core.artifacts import read_json
    from debertrt.compiler.cli import main

    work = tmp_path / "run"
    work.mkdir()
    for name in ("model.onnx", "manifest.json"):
        shutil.copy(export_dir / name, work / name)
    assert main(["calibrate", str(work / "model.onnx"), "--precision", "int8", "--data", str(calib_file),
                 "--method", "percentile"]) == 0
    assert main(["calibrate", str(work / "model.onnx"), "--precision", "fp16", "--data", str(calib_file)]) == 0
    printed = capsys.readouterr().out
    assert "model.int8.onnx" in printed and "model.fp16.onnx" in printed
    stages = read_json(work / "manifest.json")["stages"]
    assert {"export", "fp16", "int8"} <= set(stages)

    report = tmp_path / "parity"
    code = main(["parity", "--model", trained.NAME, "--task", TASK, "--artifact", str(work / "model.fp16.onnx"),
                 "--artifact", str(work / "model.int8.onnx"), "--out", str(report)])
    result = read_json(report.with_suffix(".json"))
    print(capsys.readouterr().out)
    assert code == 0 and result["passed"]
    assert result["data"]["labels"] and result["data"]["examples"] == trained.RECIPE["eval"]["examples"]
    by_precision = {e["precision"]: e for e in result["artifacts"]}
    assert set(by_precision) == {"fp16", "int8"}
    for e in by_precision.values():
        assert e["task"]["metric"] == "accuracy"
        assert e["task"]["artifact"] >= e["task"]["reference"] * 0.99
    assert by_precision["fp16"]["outputs"]["logits"]["max_abs"] <= 1e-2
