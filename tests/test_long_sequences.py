"""Long sequences: a model without an absolute position table (every v3) runs at any length
(export, rewrite with its table sized from the requested maximum, precision passes, engine
profiles, parity at 1024 and 2048 tokens); one with a table keeps a one-line refusal beyond it."""

import numpy as np
import pytest

from debertrt.calibration.fp16 import to_fp16
from debertrt.calibration.int8 import quantize_int8
from debertrt.compiler.cli import main
from debertrt.compiler.engine import EngineOptions, build_engine
from debertrt.compiler.parity import parity
from debertrt.compiler.rewrite import rewrite
from debertrt.core.artifacts import read_json
from debertrt.core.compare import output_errors
from debertrt.core.data import Dataset, TokenSpace, random_batch, random_dataset, token_batch
from debertrt.core.errors import DebertrtError
from debertrt.core.models import load_model
from debertrt.runtime.engine_json import read_engine_json
from debertrt.runtime.runners import OnnxRuntimeRunner, TorchRunner
from debertrt.runtime.tensorrt import FLAVOURS

pytestmark = pytest.mark.xdist_group("test_long_sequences")  # module fixtures build artifacts once

requires_rtx = pytest.mark.skipif(not FLAVOURS["tensorrt-rtx"].available(),
                                  reason="TensorRT-RTX is not installed (pip install 'debertrt[rtx]')")
TASK = "token-classification"  # per-token outputs: every position of a long row is compared


@pytest.fixture(scope="module")
def ref():
    return load_model("tiny-deberta-v3", TASK)


@pytest.fixture(scope="module")
def graphs(exported, tmp_path_factory):
    """The plain export and a plugin graph whose position table covers 2048 tokens."""
    onnx_path = exported("tiny-deberta-v3", TASK, "torchscript")
    plugin = rewrite(onnx_path, tmp_path_factory.mktemp("long") / "model.plugin.onnx", max_sequence=2048)
    return onnx_path, plugin


def test_the_length_rule():
    assert load_model("tiny-deberta-v3", "base").max_sequence is None  # position_biased_input=False
    assert load_model("tiny-deberta", "base").max_sequence is None     # v1 base/large have no table either
    assert load_model("tiny-deberta-v2", "base").max_sequence == 512
    with_table = load_model("tiny-deberta", "base", config_overrides={"position_biased_input": True})
    assert with_table.max_sequence == 512


def test_export_is_checked_beyond_the_table_and_runs_at_any_length(exported):
    path = exported("tiny-deberta-v3", "sequence-classification", "dynamo")
    stage = read_json(path.parent / "manifest.json")["stages"]["export"]
    assert stage["max_sequence"] is None and stage["absolute_positions"] is False
    assert [1, 600] in stage["validation"]["shapes"]
    ref = load_model("tiny-deberta-v3", "sequence-classification")
    feed = random_batch(ref, 2, 1500, np.random.default_rng(3))
    with TorchRunner(ref) as torch_runner, OnnxRuntimeRunner(path) as ort_runner:
        err = output_errors(torch_runner.infer(feed)["logits"], ort_runner.infer(feed)["logits"],
                            feed["attention_mask"])
    assert err["max_abs"] <= 1e-4


def test_the_rewrite_sizes_its_table_from_the_requested_maximum(graphs, ref, tmp_path):
    onnx_path, plugin = graphs
    report = read_json(plugin.report)
    assert report["rel_table"]["max_sequence"] == 2048 and report["rel_table"]["length"] == 2 * 2048 - 1
    assert "position table for S <= 2048" in plugin.summary["text"]
    default = rewrite(onnx_path, tmp_path / "model.plugin.onnx")  # max_position_embeddings: 512
    assert read_json(default.report)["rel_table"]["max_sequence"] == 512
    feed = random_batch(ref, 1, 700, np.random.default_rng(0))
    with OnnxRuntimeRunner(default.path) as runner, pytest.raises(DebertrtError, match="--max-sequence 700"):
        runner.infer(feed)


def test_parity_at_1024_and_2048_for_the_plain_and_the_plugin_graph(graphs, ref, tmp_path):
    space = TokenSpace.of(ref)
    rng = np.random.default_rng(7)
    dataset = Dataset([token_batch(space, 2, 1024, rng), token_batch(space, 1, 2048, rng)], source="random, long")
    result = parity(ref, [graphs[0], graphs[1].path], dataset, tmp_path / "long")
    assert result["verdict"] == "passed", [e["criteria"] for e in result["artifacts"]]
    assert all(e["verdict"] == "passed" for e in result["artifacts"])
    assert result["data"]["lengths"] == {"min": 1, "max": 2048, "padded_to": [1024, 2048]}
    assert "Lengths covered: 1–2048 tokens (batches padded to 1024, 2048)" in (tmp_path / "long.md").read_text()


def test_precision_passes_at_long_lengths(graphs, ref, tmp_path):
    """fp16 and int8 graphs calibrated on short batches run at 1024 tokens: nothing in them is tied
    to a length."""
    plugin = graphs[1].path
    calibration = random_dataset(ref, batches=2, batch_size=4, max_sequence=48, seed=1)
    fallback = random_dataset(ref, batches=1, batch_size=4, max_sequence=48, seed=2)
    fp16 = to_fp16(plugin, tmp_path / "model.plugin.fp16.onnx", calibration, ref=ref).path
    int8 = quantize_int8(plugin, tmp_path / "model.plugin.int8.onnx", calibration, ref=ref,
                         fallback_dataset=fallback).path
    long = Dataset([token_batch(TokenSpace.of(ref), 2, 1024, np.random.default_rng(9))], source="random, long")
    result = parity(ref, [fp16, int8], long, tmp_path / "precision")
    fp16_entry, int8_entry = result["artifacts"]
    assert fp16_entry["verdict"] == "passed", fp16_entry["criteria"]
    assert int8_entry["outputs"]["logits"]["finite"]
    assert int8_entry["outputs"]["logits"]["min_row_cosine"] >= 0.9


def test_engine_profiles_beyond_512(graphs, tmp_path):
    onnx_path, plugin = graphs
    with pytest.raises(DebertrtError, match="covers \\(2048\\); rewrite with --max-sequence 8192"):
        build_engine(plugin.path, tmp_path, EngineOptions(backend="tensorrt", profiles=("sequence=1:512:8192",)))


@requires_rtx
def test_rtx_builds_a_profile_up_to_8192(graphs, tmp_path):
    plan = build_engine(graphs[0], tmp_path, EngineOptions(backend="tensorrt-rtx", optimization_level=0,
                                                           profiles=("batch=1:1:2,sequence=1:512:8192",)))
    engine = read_engine_json(plan)
    assert engine["profiles"] == [{"batch": [1, 1, 2], "sequence": [1, 512, 8192]}]
    assert engine["max_sequence"] is None


def test_absolute_positions_keep_a_one_line_refusal(exported, tmp_path, capsys):
    v2 = load_model("tiny-deberta-v2", "sequence-classification")
    with pytest.raises(DebertrtError, match="exceeds the model's maximum 512.*absolute position table"):
        random_batch(v2, 1, 600, np.random.default_rng(0))
    path = exported("tiny-deberta-v2", "sequence-classification", "torchscript")
    with pytest.raises(DebertrtError, match="--max-sequence 1024 exceeds the model's maximum 512"):
        rewrite(path, tmp_path / "p.onnx", max_sequence=1024)
    with pytest.raises(DebertrtError, match="sequence max 600 exceeds the model's maximum 512"):
        build_engine(path, tmp_path, EngineOptions(backend="tensorrt-rtx", profiles=("sequence=1:16:600",)))
    out = tmp_path / "build"
    code = main(["build", "--model", "tiny-deberta-v2", "--precision", "fp32", "--backend", "none",
                 "--exporter", "torchscript", "--profile", "sequence=1:128:1024", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "1024" in err and "512" in err
    assert not out.exists()
    v1 = load_model("tiny-deberta", "base", config_overrides={"position_biased_input": True})
    with pytest.raises(DebertrtError, match="absolute position table"):
        random_batch(v1, 1, 513, np.random.default_rng(0))
