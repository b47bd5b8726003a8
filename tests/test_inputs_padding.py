"""Inputs and padding: token_type_ids only where the model has token types (and dropped with a
note where it has none), no casts TensorRT's parser rejects, and padding extremes (right, left,
lengths 1 … S, a row of padding only) finite in every artifact and equal to batch-of-one runs."""

import logging

import numpy as np
import onnx
import pytest

from debertrt.compiler.engine import EngineOptions, build_engine
from debertrt.compiler.padding import padding_check, with_padding
from debertrt.compiler.parity import parity
from debertrt.core.compare import TOLERANCES
from debertrt.core.data import TokenSpace, padding_extremes, random_dataset
from debertrt.core.models import PRESETS, load_model, tasks_for
from debertrt.runtime.engine import Engine
from debertrt.runtime.runners import OnnxRuntimeRunner, TensorRTRunner
from debertrt.runtime.tensorrt import FLAVOURS
from fixtures.chain import chain_artifacts

pytestmark = pytest.mark.xdist_group("test_inputs_padding")  # module fixtures build artifacts once

requires_rtx = pytest.mark.skipif(not FLAVOURS["tensorrt-rtx"].available(),
                                  reason="TensorRT-RTX is not installed (pip install 'debertrt[rtx]')")
SEQUENCE = 24


def test_token_type_ids_are_an_input_only_with_token_types(exported):
    with_types = onnx.load(str(exported("tiny-deberta-v2", "sequence-classification", "torchscript")))
    without = onnx.load(str(exported("tiny-deberta-v3", "sequence-classification", "torchscript")))
    assert [i.name for i in with_types.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [i.name for i in without.graph.input] == ["input_ids", "attention_mask"]


@pytest.fixture
def notes(caplog):
    """The debertrt logger's records (it does not propagate once the CLI has configured it)."""
    logger = logging.getLogger("debertrt")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # each record once, through caplog's handler
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
    logger.propagate = propagate


def tokenizer_like_feed(ref):
    """What a tokenizer returns for a model without token types: token_type_ids included."""
    feed = padding_extremes(TokenSpace.of(ref), 8)
    return {**feed, "token_type_ids": np.zeros_like(feed["input_ids"])}


def test_token_type_ids_fed_to_a_model_without_them_are_dropped_with_a_note(exported, notes):
    ref = load_model("tiny-deberta-v3", "sequence-classification")
    path = exported("tiny-deberta-v3", "sequence-classification", "torchscript")
    with OnnxRuntimeRunner(path) as runner:
        out = runner.infer(tokenizer_like_feed(ref))
        runner.infer(tokenizer_like_feed(ref))
    assert np.isfinite(out["logits"]).all()
    said = [r.getMessage() for r in notes.records if "token_type_ids" in r.getMessage()]
    assert len(said) == 1 and "dropped" in said[0]


@requires_rtx
def test_engines_drop_token_type_ids_with_a_note(exported, tmp_path, notes):
    """Before: the engine runtime ignored them without a word."""
    ref = load_model("tiny-deberta-v3", "sequence-classification")
    plan = build_engine(exported("tiny-deberta-v3", "sequence-classification", "torchscript"), tmp_path,
                        EngineOptions(backend="tensorrt-rtx", optimization_level=0,
                                      profiles=("batch=1:4:8,sequence=1:8:32",)))
    feed = tokenizer_like_feed(ref)
    assert Engine(plan).check_inputs(feed) == 0
    assert set(TensorRTRunner(plan).check_feed(feed)) == {"input_ids", "attention_mask"}
    assert sum("token_type_ids" in r.getMessage() and "dropped" in r.getMessage() for r in notes.records) == 2


@pytest.mark.parametrize("preset", ["tiny-deberta-v2", "tiny-deberta-v3"])
def test_no_casts_tensorrt_rejects_and_integer_inputs(exported, preset):
    """Every head's graph: int64 inputs, and no Cast to uint8 (TensorRT's parser refuses uint8
    outside a few float conversions; bool masks are cast from int64 or float only)."""
    for task in tasks_for(PRESETS[preset]["model_type"]):
        model = onnx.load(str(exported(preset, task, "torchscript")))
        assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.INT64}, task
        targets = {a.i for n in model.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
        assert onnx.TensorProto.UINT8 not in targets, task
        assert targets <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.BOOL,
                           onnx.TensorProto.INT32}, (task, targets)


# ---------------------------------------------------------------------------- padding extremes


@pytest.fixture(scope="module", params=["sequence-classification", "token-classification"])
def artifacts(request, exported, tmp_path_factory):
    """A model's plain and plugin graphs, fp16 of the plugin graph and int8 of the plain one."""
    task = request.param
    ref = load_model("tiny-deberta-v3", task)
    made = chain_artifacts(ref, exported("tiny-deberta-v3", task, "torchscript"),
                           tmp_path_factory.mktemp(f"padding-{task}"), int8_of="fp32")
    return ref, [made[k] for k in ("fp32", "plugin", "fp16", "int8")]


def test_left_padding_changes_nothing_without_absolute_positions(exported):
    """v3 has relative positions only: a left-padded row's tokens get what they get unpadded."""
    ref = load_model("tiny-deberta-v3", "token-classification")
    feed = padding_extremes(TokenSpace.of(ref), SEQUENCE)
    left = np.flatnonzero((feed["attention_mask"][:, 0] == 0) & (feed["attention_mask"].sum(-1) > 0))
    assert len(left) >= 2
    with OnnxRuntimeRunner(exported("tiny-deberta-v3", "token-classification", "torchscript")) as runner:
        batched = runner.infer(feed)["logits"]
        for k in left:
            keep = feed["attention_mask"][k].astype(bool)
            alone = runner.infer({n: v[k:k + 1, keep] for n, v in feed.items()})["logits"][0]
            np.testing.assert_allclose(batched[k, keep], alone, atol=1e-4)


def test_default_random_data_covers_left_padding_and_single_tokens(tmp_path, artifacts):
    """Every batch has a full row and a single-token row, and right- and left-padded rows, except
    left padding for heads that read the first position (there it is a pad token, in PyTorch too)."""
    ref, paths = artifacts
    dataset = random_dataset(ref, batches=2, batch_size=6, max_sequence=20)
    padding = dataset.describe()["padding"]
    assert padding["right_padded"] >= 1 and padding["length_1"] >= 2 and padding["full"] >= 2
    if ref.task == "sequence-classification":
        assert padding["left_padded"] == 0
    else:
        assert padding["left_padded"] >= 1
    result = parity(ref, paths[:1], dataset, tmp_path / "report")
    assert result["verdict"] == "passed"
    assert f"{padding['left_padded']} left-padded" in (tmp_path / "report.md").read_text()


def test_every_parity_report_checks_padding_extremes_and_the_check_can_fail(artifacts, tmp_path):
    """Plain, plugin, fp16 and int8 graphs: on a batch of right- and left-padded rows, single tokens
    and a row of padding only, every output is finite at every position and every row equals a
    batch-of-one run of itself within the artifact's tolerance."""
    ref, paths = artifacts
    feed = padding_extremes(TokenSpace.of(ref), SEQUENCE)
    lengths = feed["attention_mask"].sum(-1)
    assert {0, 1, SEQUENCE} <= set(lengths.tolist()) and (feed["attention_mask"][:, 0] == 0).sum() >= 3
    result = parity(ref, paths, random_dataset(ref, batches=1, batch_size=4, max_sequence=16), tmp_path / "r")
    for entry in result["artifacts"]:
        assert entry["padding"]["status"] == "ran" and 0 in entry["padding"]["lengths"]
        padding = [c for c in entry["criteria"] if "padding extremes" in c["criterion"] or "batch-of-one" in c["criterion"]]
        assert len(padding) >= 2 and all(c["passed"] for c in padding), entry["path"]
    assert "## Padding extremes" in (tmp_path / "r.md").read_text()

    space, tolerance = TokenSpace.of(ref), TOLERANCES["fp32"]
    name = ref.output_names[0]

    class BatchDependent:  # answers that move with the batch size, as a kernel picked per batch could
        def infer(self, feed):
            mask = feed["attention_mask"].astype(np.float32)
            return {name: mask[..., None] * (1.0 + 0.01 * (len(mask) > 1)) * np.ones(3, np.float32)}

    class NaNOnPadding:  # 0/0 on the row of padding only
        def infer(self, feed):
            mask = feed["attention_mask"].astype(np.float32)
            with np.errstate(invalid="ignore", divide="ignore"):
                return {name: (mask / mask.sum(-1, keepdims=True))[..., None] * np.ones(3, np.float32)}

    moved = padding_check(BatchDependent(), space, tolerance)
    assert [c["passed"] for c in moved["criteria"]][0] is True and not all(c["passed"] for c in moved["criteria"])
    nan = padding_check(NaNOnPadding(), space, tolerance)
    assert nan["criteria"][0]["passed"] is False and "inf/NaN" in nan["criteria"][0]["value"]
    assert with_padding("passed", [], nan)[0] == "failed"
