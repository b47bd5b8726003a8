"""The fused rewrite (``rewrite --fuse attention``): one DisentangledFlashAttention node per layer and
nothing of the S×S path left, against PyTorch over presets, heads, exporters, lengths and padding;
single-kind and bucket configs; planted defects caught by parity (those the rewrite refuses are in
test_rewrite.py); fp16/int8 on the fused graph; the CLI and a short ``build --fuse attention``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from debertrt.compiler.cli import main
from debertrt.compiler.rewrite import rewrite
from debertrt.core.artifacts import read_json
from debertrt.core.compare import output_errors
from debertrt.core.data import TokenSpace, padding_extremes, random_batch
from debertrt.core.models import load_model
from debertrt.plugins import spec
from debertrt.runtime.runners import OnnxRuntimeRunner, TorchRunner
from fixtures import attention_graphs

pytestmark = pytest.mark.xdist_group("test_rewrite_fused")

ATOL = 1e-5
ALL_LENGTHS = (1, 7, 64, 65, 300)  # 300 > tiny-deberta's max_relative_positions (128): v1's span clamp
# Each preset, head and exporter at least once; each preset runs every length on one exporter.
CASES = [
    ("tiny-deberta", "base", "torchscript", ALL_LENGTHS),
    ("tiny-deberta", "token-classification", "dynamo", (7, 300)),
    ("tiny-deberta-v2", "masked-lm", "dynamo", ALL_LENGTHS),
    ("tiny-deberta-v2", "question-answering", "torchscript", (1, 65)),
    ("tiny-deberta-v3", "sequence-classification", "dynamo", (7, 300)),
    ("tiny-deberta-v3", "multiple-choice", "torchscript", (1, 64)),
    ("tiny-deberta-v3", "base", "dynamo", ALL_LENGTHS),
]
VARIANTS = [  # exports shared with tests/test_rewrite.py where they coincide
    ("tiny-deberta", {"pos_att_type": ["p2c"]}, "dynamo"),
    ("tiny-deberta-v2", {"pos_att_type": ["c2p"]}, "dynamo"),
    ("tiny-deberta-v3", {"position_buckets": 64, "max_relative_positions": 300}, "torchscript"),
    ("tiny-deberta-v3", {"share_att_key": False}, "torchscript"),
]


def check_fused_graph(path, ref) -> onnx.ModelProto:
    """One fused node per layer with the spec's attributes; no GatherElements, Softmax or MatMul of two
    activations left (every MatMul has a weight)."""
    model = onnx.load(str(path))
    weights = {i.name for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == spec.FLASH_OP_TYPE]
    assert len(nodes) == ref.config.num_hidden_layers
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"GatherElements", "Softmax", spec.OP_TYPE}
    assert all(set(n.input) & weights for n in model.graph.node if n.op_type == "MatMul")
    kinds = list(ref.config.pos_att_type)
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert node.domain == spec.DOMAIN and attrs["plugin_version"] == b"1"
        assert (attrs["has_c2p"], attrs["has_p2c"]) == ("c2p" in kinds, "p2c" in kinds)
        assert len(node.input) == 5 + len(kinds)
        for name in node.input[3:3 + len(kinds)]:  # positional keys/queries: folded to [H, 2P, D]
            table = numpy_helper.to_array({i.name: i for i in model.graph.initializer}[name])
            assert table.shape[0] == ref.config.num_attention_heads and table.shape[2] == 8
    return model


def compare_with_torch(ref, path, lengths, seed=0) -> float:
    """Max abs error on non-pad positions over random batches and padding extremes (left, right and an
    all-pad row; left padding only where the head does not read position 0)."""
    rng = np.random.default_rng(seed)
    space = TokenSpace.of(ref)
    worst = 0.0
    with TorchRunner(ref) as torch_runner, OnnxRuntimeRunner(path) as fused:
        for sequence in lengths:
            feeds = [random_batch(ref, 3, sequence, rng)]
            if space.left_padding:
                feeds.append(padding_extremes(space, sequence))
            for feed in feeds:
                expected, got = torch_runner.infer(feed), fused.infer(feed)
                for name in ref.output_names:
                    assert np.isfinite(got[name]).all(), (name, sequence)
                    error = output_errors(expected[name], got[name], feed["attention_mask"])["max_abs"]
                    assert error <= ATOL, (name, sequence, error)
                    worst = max(worst, error)
    return worst


@pytest.mark.parametrize("preset, task, exporter, lengths", CASES)
def test_fused_graph_matches_pytorch(exported, tmp_path, preset, task, exporter, lengths):
    onnx_path = exported(preset, task, exporter)
    ref = load_model(preset, task)
    result = rewrite(onnx_path, tmp_path / "model.flash.onnx", fuse="attention")
    check_fused_graph(result.path, ref)
    report = read_json(tmp_path / "model.flash.rewrite.json")
    assert report["fuse"] == "attention" and report["nodes"]["added"] == ref.config.num_hidden_layers
    assert max(report["confirmed"]["max_abs"].values()) <= ATOL
    first = report["layers"][0]["fused"]
    if preset == "tiny-deberta":  # v1 scales q; its positional inputs are the whole table, P = max_rel
        assert first["q_scale"] == pytest.approx(1 / np.sqrt(24)) and first["k_scale"] == first["pos_scale"] == 1
        assert first["positional_rows"] == 2 * ref.config.max_relative_positions
    else:
        assert first["q_scale"] == 1 and first["k_scale"] == first["pos_scale"] == pytest.approx(1 / np.sqrt(24))
    worst = compare_with_torch(ref, result.path, lengths)
    print(f"{preset} {task} {exporter} S={lengths}: max abs vs PyTorch {worst:.2e}")


@pytest.mark.parametrize("preset, overrides, exporter", VARIANTS)
def test_other_configs_fuse_and_match(exported, tmp_path, preset, overrides, exporter):
    onnx_path = exported(preset, "base", exporter, overrides)
    ref = load_model(preset, "base", config_overrides=overrides)
    result = rewrite(onnx_path, tmp_path / "model.flash.onnx", fuse="attention")
    check_fused_graph(result.path, ref)
    print(f"{preset} {overrides} {exporter}: max abs vs PyTorch {compare_with_torch(ref, result.path, (7, 300)):.2e}")


# ------------------------------------------------------------------ small graphs: the pattern and its defects


def test_a_small_attention_graph_fuses_exactly(tmp_path):
    path = attention_graphs.build(tmp_path)
    result = rewrite(path, fuse="attention")
    assert result.path == tmp_path / "model.flash.onnx" and result.summary["nodes"]["added"] == 2
    rng = np.random.default_rng(0)
    ids = rng.integers(1, attention_graphs.VOCAB, size=(4, 9))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0   # right padding
    mask[2, :4] = 0   # left padding
    mask[3] = 0       # all padding
    feed = {"input_ids": ids, "attention_mask": mask}
    with OnnxRuntimeRunner(path) as plain, OnnxRuntimeRunner(result.path) as fused:
        want, got = plain.infer(feed)["last_hidden_state"], fused.infer(feed)["last_hidden_state"]
    assert np.isfinite(got).all()
    assert np.abs(want - got)[mask != 0].max() <= ATOL


def _mutated(model, mutation):
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type == spec.FLASH_OP_TYPE):
        if mutation == "rolled-table":
            table = inits[node.input[-1]]
            table.CopyFrom(numpy_helper.from_array(np.roll(numpy_helper.to_array(table), 3), table.name))
        elif mutation == "wrong-scale":
            next(a for a in node.attribute if a.name == "k_scale").f *= 1.25
        else:  # c2p and p2c swapped: each positional table where the other belongs
            node.input[3], node.input[4] = node.input[4], node.input[3]
    return model


@pytest.mark.parametrize("mutation", ["rolled-table", "wrong-scale", "swapped-positions"])
def test_a_broken_fused_graph_fails_parity(exported, tmp_path, mutation):
    ref = load_model("tiny-deberta-v3", "base")
    path = rewrite(exported("tiny-deberta-v3", "base", "torchscript"), tmp_path / "model.flash.onnx",
                   fuse="attention").path
    onnx.save(_mutated(onnx.load(str(path)), mutation), str(tmp_path / "broken.onnx"))
    feed = random_batch(ref, 2, 64, np.random.default_rng(0))
    with TorchRunner(ref) as torch_runner, OnnxRuntimeRunner(tmp_path / "broken.onnx") as broken:
        error = output_errors(torch_runner.infer(feed)["last_hidden_state"], broken.infer(feed)["last_hidden_state"],
                              feed["attention_mask"])["max_abs"]
    assert error > 1e-3


# ------------------------------------------------------------------ precision passes on the fused graph


def test_fp16_and_int8_passes_keep_the_fused_node(exported, tmp_path):
    from debertrt.calibration.fp16 import to_fp16
    from debertrt.calibration.int8 import quantize_int8
    from debertrt.plugins.graph_types import elem_types

    ref = load_model("tiny-deberta-v3", "base")
    path = rewrite(exported("tiny-deberta-v3", "base", "dynamo"), tmp_path / "model.flash.onnx",
                   fuse="attention").path
    half = onnx.load(str(to_fp16(path, ref=ref).path))
    types = elem_types(half)
    for node in (n for n in half.graph.node if n.op_type == spec.FLASH_OP_TYPE):
        assert [types[i] for i in node.input[:5]] == [onnx.TensorProto.FLOAT16] * 5  # q, k, v, pos_key, pos_query
    quantized = onnx.load(str(quantize_int8(path, ref=ref).path))
    producers = {o: n for n in quantized.graph.node for o in n.output}
    fused = [n for n in quantized.graph.node if n.op_type == spec.FLASH_OP_TYPE]
    assert len(fused) == 2
    for node in fused:  # float inputs: the projections' Q/DQ end at their MatMuls
        assert all(producers[i].op_type != "DequantizeLinear" for i in node.input if i in producers)
    matmuls = [n for n in quantized.graph.node if n.op_type == "MatMul"]
    assert all(producers[n.input[0]].op_type == "DequantizeLinear" for n in matmuls)
    for name in ("model.flash.fp16.onnx", "model.flash.int8.onnx"):
        feed = random_batch(ref, 2, 33, np.random.default_rng(1))
        with TorchRunner(ref) as torch_runner, OnnxRuntimeRunner(tmp_path / name) as runner:
            got = runner.infer(feed)["last_hidden_state"]
            assert np.isfinite(got).all()
            cosine = output_errors(torch_runner.infer(feed)["last_hidden_state"], got,
                                   feed["attention_mask"])["min_row_cosine"]
        assert cosine >= 0.98, (name, cosine)


# ------------------------------------------------------------------ CLI


def test_cli_rewrite_fuse_attention(tmp_path, capsys):
    path = attention_graphs.build(tmp_path)
    assert main(["rewrite", str(path), "--fuse", "attention"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'model.flash.onnx'}" in printed and "2 DisentangledFlashAttention nodes" in printed
    assert read_json(tmp_path / "model.flash.rewrite.json")["op_type"] == spec.FLASH_OP_TYPE
    assert read_json(tmp_path / "manifest.json")["stages"]["rewrite"]["options"]["fuse"] == "attention"
    assert not (tmp_path / "model.plugin.onnx").exists()


def test_cli_build_fuse_attention(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["build", "--model", "tiny-deberta-v3", "--task", "token-classification", "--fuse", "attention",
                 "--precision", "fp32", "--precision", "fp16", "--backend", "none", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = read_json(out / "parity.json")
    names = [e["path"].rsplit("/", 1)[-1] for e in result["artifacts"]]
    assert names == ["model.onnx", "model.flash.onnx", "model.fp16.onnx", "model.flash.fp16.onnx"]
    assert all(e["status"] == "ran" and e["verdict"] == "passed" for e in result["artifacts"])
    assert any("no engine built" in note for note in result["notes"])
    assert "## Not done, and why" in (out / "parity.md").read_text()
