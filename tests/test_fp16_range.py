"""Activations beyond the fp16 range: the ``tiny-deberta-v3-hot-ffn`` preset overflows fp16 in one
feed-forward block (as mDeBERTa-v3 and v2-xlarge do in places); the fp16 pass keeps exactly those
places in fp32 islands, says where, and its outputs stay finite and within the fp16 tolerance."""

import numpy as np
import onnx
import pytest

from debertrt.calibration.fp16 import convert, to_fp16
from debertrt.calibration.options import FP16_MAX
from debertrt.calibration.ranges import TensorRanges, collect_ranges
from debertrt.compiler.cli import main
from debertrt.compiler.export import ExportOptions, export
from debertrt.compiler.parity import parity
from debertrt.core.artifacts import read_json
from debertrt.core.data import TokenSpace, padding_extremes, random_dataset
from debertrt.core.errors import DebertrtError
from debertrt.plugins.graph_types import elem_types
from debertrt.core.models import HOT_FFN, load_model
from debertrt.runtime.runners import OnnxRuntimeRunner

pytestmark = pytest.mark.xdist_group("test_fp16_range")  # module fixtures build artifacts once

PRESET, TASK = "tiny-deberta-v3-hot-ffn", "sequence-classification"


@pytest.fixture(scope="module")
def ref():
    return load_model(PRESET, TASK)


@pytest.fixture(scope="module")
def hot(ref, tmp_path_factory):
    out = tmp_path_factory.mktemp("hot")
    onnx_path = export(ref, out, ExportOptions(exporter="torchscript"))
    calibration = random_dataset(ref, batches=2, batch_size=4, max_sequence=32, seed=1)
    return onnx_path, to_fp16(onnx_path, dataset=calibration, ref=ref), calibration


def test_the_preset_overflows_fp16_where_it_says(hot):
    """Its fp32 activations leave the fp16 range in the scaled feed-forward block and nowhere else
    (the masking constants aside)."""
    onnx_path, _, calibration = hot
    assert HOT_FFN["module"] == "encoder.layer.1.intermediate.dense"
    feeds = [{n: b[n] for n in ("input_ids", "attention_mask")} for b in calibration.batches]
    ranges = collect_ranges(onnx.load(str(onnx_path)), feeds)
    beyond = {name for name, amax in ranges.amax.items() if FP16_MAX < amax < 1e30}
    assert beyond and all("layer.1/intermediate" in n or "layer.1/output" in n for n in beyond), beyond


def test_fp16_keeps_the_overflowing_block_in_fp32_and_reports_where(hot, ref, tmp_path, capsys):
    onnx_path, result, _ = hot
    report = read_json(result.report)
    assert [i["where"] for i in report["above_range"]] == ["layer.1"]
    assert report["above_range"][0]["max_abs"] > FP16_MAX
    kept = [k["node"] for k in report["fp32_nodes"] if k["kind"] == "measured-range"]
    assert any("intermediate/dense" in n for n in kept) and any("output/dense" in n for n in kept)
    assert all("layer.1" in n for n in kept)
    markdown = result.report.with_suffix(".md").read_text()
    assert "| layer.1 |" in markdown and "beyond the range threshold" in markdown

    dataset = random_dataset(ref, batches=2, batch_size=6, max_sequence=40)
    parity_result = parity(ref, [result.path], dataset, tmp_path / "parity")
    assert parity_result["verdict"] == "passed", parity_result["artifacts"][0]["criteria"]
    with OnnxRuntimeRunner(result.path) as runner:
        assert np.isfinite(runner.infer(padding_extremes(TokenSpace.of(ref), 24))["logits"]).all()

    code = main(["calibrate", str(onnx_path), "--precision", "fp16", "--model", PRESET, "--task", TASK,
                 "--out", str(tmp_path / "cli.fp16.onnx")])
    assert code == 0 and "kept fp32: layer.1" in capsys.readouterr().out


def test_without_the_measured_islands_fp16_overflows(hot, tmp_path):
    """The same conversion with no measured ranges (op rules only) overflows in layer.1 once its fp16
    tensors are held in fp16 (ONNX Runtime on the CPU would otherwise run that chain in fp32 and hide
    it); with the islands, every fp16 tensor stays in range."""
    onnx_path, result, calibration = hot
    feeds = [{n: calibration.batches[0][n] for n in ("input_ids", "attention_mask")}]
    blind, _ = convert(onnx.load(str(onnx_path)), TensorRanges())
    halves = [o for n in blind.graph.node for o in n.output if elem_types(blind).get(o) == onnx.TensorProto.FLOAT16]
    with pytest.raises(DebertrtError, match="layer.1/intermediate.*holds inf in the fp16 graph"):
        collect_ranges(blind, feeds, halves, graph="fp16")
    check = read_json(result.report)["check"]
    assert 0 < check["fp16_max_abs"] <= FP16_MAX
