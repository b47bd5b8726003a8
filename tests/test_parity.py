"""Parity reports: metrics, pass/fail, text data through a checkpoint's tokenizer."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from debertrt.core.compare import (TOLERANCES, OutputTolerance, TaskAgreement, Tolerance, judge, output_errors,
                                   overall)
from debertrt.core.errors import DebertrtError
from debertrt.compiler.export import ExportOptions, export
from debertrt.core.data import random_dataset, read_examples, text_dataset
from debertrt.core.models import load_model
from debertrt.compiler.parity import parity

from conftest import SENTENCES


@pytest.fixture(scope="module")
def checkpoint(text_checkpoint):
    """A save_pretrained directory with weights and a DebertaV2 fast tokenizer."""
    return text_checkpoint("tiny-deberta-v3", "sequence-classification", num_labels=2)


def test_checkpoint_with_text_data_reports_task_metric(checkpoint, tmp_path):
    ref = load_model(str(checkpoint), "sequence-classification")
    assert ref.tokenizer is not None
    onnx_path = export(ref, tmp_path / "art", ExportOptions(exporter="torchscript"))
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join(json.dumps({"text": s, "label": i % 2}) for i, s in enumerate(SENTENCES)))
    dataset = text_dataset(ref, data, batch_size=4)
    assert len(dataset) == len(SENTENCES) and len(dataset.batches) == 2
    assert any((b["attention_mask"] == 0).any() for b in dataset.batches)  # padded rows

    result = parity(ref, [onnx_path], dataset, tmp_path / "report")
    entry = result["artifacts"][0]
    assert result["verdict"] == entry["verdict"] == "passed" and entry["precision"] == "fp32"
    assert entry["runtime"] == "onnxruntime-cpu"
    assert entry["task"]["metric"] == "accuracy"
    assert entry["task"]["artifact"] == entry["task"]["reference"]
    assert entry["task"]["agreement"]["argmax"] == 1.0
    assert entry["outputs"]["logits"]["max_abs"] <= 1e-4
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["artifacts"][0]["path"] == str(onnx_path)
    assert (tmp_path / "report_errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "report.md").read_text()
    assert "model.onnx" in markdown and "PASSED" in markdown and "report_errors.png" in markdown


def test_a_wrong_artifact_fails(exported, tmp_path):
    """Perturb one weight: the same report must now fail."""
    ref = load_model("tiny-deberta-v3", "masked-lm")
    model = onnx.load(str(exported("tiny-deberta-v3", "masked-lm", "torchscript")))
    matmul_inputs = {name for node in model.graph.node if node.op_type == "MatMul" for name in node.input}
    # a MatMul weight: scaling the embeddings would be undone by the LayerNorm after them
    weight = max((t for t in model.graph.initializer if t.name in matmul_inputs), key=lambda t: np.prod(t.dims))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    result = parity(ref, [broken], random_dataset(ref, batches=2, batch_size=3, max_sequence=40), tmp_path / "r")
    entry = result["artifacts"][0]
    assert result["verdict"] == entry["verdict"] == "failed"
    assert entry["outputs"]["logits"]["max_abs"] > 1e-2
    assert "**FAILED**" in (tmp_path / "r.md").read_text()


def test_output_errors_on_non_pad_positions_only():
    mask = np.array([[1, 1, 0]])
    ref = np.zeros((1, 3, 2), dtype=np.float32)
    got = ref.copy()
    got[0, 2] = 100.0  # a padded position: ignored
    assert output_errors(ref, got, mask)["max_abs"] == 0.0
    got[0, 1, 0] = 0.5
    err = output_errors(ref, got, mask, OutputTolerance(atol=0.1))
    assert err["max_abs"] == 0.5 and err["within_tol"] == 0.75 and err["count"] == 4 and err["rows"] == 2
    got[0, 0, 0] = np.nan
    assert np.isnan(output_errors(ref, got, mask)["max_abs"]) and not output_errors(ref, got, mask)["finite"]


def test_rtol_and_row_metrics():
    mask = np.array([[1, 1]])
    ref = np.array([[[10.0, 0.0], [0.0, 1.0]]])
    got = np.array([[[10.5, 0.0], [0.0, -1.0]]])  # 5 % off on one token, reversed on the other
    err = output_errors(ref, got, mask, OutputTolerance(atol=0.0, rtol=0.06))
    assert err["within_tol"] == 0.75  # 10 -> 10.5 within 6 %; 1 -> -1 not
    assert err["min_row_cosine"] == pytest.approx(-1.0) and err["max_row_rel_error"] == pytest.approx(2.0)


def test_every_criterion_can_fail_and_nothing_applicable_is_not_judged():
    """An int8 artifact of a base model (hidden states, no predictions) used to pass whenever its
    outputs were finite: its hidden states are now judged by row cosine and relative error."""
    mask = np.ones((1, 4), dtype=np.int64)
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1, 4, 8))
    garbage = rng.normal(size=(1, 4, 8))  # finite, unrelated to the reference
    errors = {"last_hidden_state": output_errors(ref, garbage, mask)}
    verdict, criteria = judge(errors, None, TOLERANCES["int8"])
    assert verdict == "failed" and {c["criterion"] for c in criteria if not c["passed"]} == {
        "row cosine (min)", "row ‖Δ‖/‖ref‖ (max)"}
    close = {"last_hidden_state": output_errors(ref, ref * 1.01, mask)}
    assert judge(close, None, TOLERANCES["int8"])[0] == "passed"
    for precision in TOLERANCES:  # every precision judges both kinds of output
        for output in ("last_hidden_state", "logits"):
            tolerance = TOLERANCES[precision]
            errors = {output: output_errors(ref, garbage, mask, tolerance.for_output(output))}
            assert judge(errors, None, tolerance)[0] == "failed", (precision, output)
    assert judge({"logits": close["last_hidden_state"]}, None, Tolerance({}))[0] == "not judged"
    assert overall(["passed", "not judged"]) == "passed" and overall(["not judged"]) == "not judged"
    assert overall(["passed", "failed"]) == "failed"


def test_task_agreement_metrics():
    mask = np.ones((2, 3), dtype=np.int64)
    ref = {"start_logits": np.array([[0, 5, 1], [3, 0, 0.]]), "end_logits": np.array([[0, 0, 5], [0, 4, 0.]])}
    got = {"start_logits": np.array([[0, 5, 1], [0, 3, 0.]]), "end_logits": np.array([[0, 0, 5], [0, 4, 0.]])}
    agreement = TaskAgreement("question-answering")
    agreement.update(ref, got, mask)
    assert agreement.result() == {"start": 0.5, "end": 1.0, "exact_span": 0.5}

    logits = np.random.default_rng(0).normal(size=(2, 3, 10))
    shuffled = logits.copy()
    shuffled[0, 0] = -shuffled[0, 0]  # top-1 changes at one position
    mlm = TaskAgreement("masked-lm")
    mlm.update({"logits": logits}, {"logits": shuffled}, mask)
    assert mlm.result()["top1"] == pytest.approx(5 / 6)


@pytest.mark.parametrize("content,suffix,message", [
    ("", ".txt", "no examples"),
    ("\n  \n", ".txt", "no examples"),
    ('{"text": "ok"}\nnot json\n', ".jsonl", ":2: not valid JSON"),
    ('{"label": 1}\n', ".jsonl", "\"text\""),
    ("sentence,label\nhello,1\n", ".csv", "\"text\" column"),
    ("text,label\nhello,yes\n", ".csv", "integers"),
])
def test_bad_data_files(tmp_path, content, suffix, message):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(DebertrtError, match=message.replace("(", r"\(")):
        read_examples(path)


def test_csv_with_pairs_and_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,text_pair,label\nhello,world,1\nbye,moon,0\n")
    texts, labels = read_examples(path)
    assert texts == [("hello", "world"), ("bye", "moon")] and labels == [1, 0]


def test_text_data_needs_a_tokenizer(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("hello\n")
    with pytest.raises(DebertrtError, match="no tokenizer"):
        text_dataset(load_model("tiny-deberta-v3", "base"), path)
