"""Export of every preset x head x exporter, checked against PyTorch at many sequence lengths."""

import numpy as np
import onnx
import pytest

from debertrt.core.artifacts import read_json
from debertrt.core.compare import output_errors
from debertrt.compiler.export import ExportOptions, export
from debertrt.core.data import random_batch
from debertrt.core.models import PRESETS, load_model, tasks_for
from debertrt.runtime.runners import OnnxRuntimeRunner, TorchRunner

SEQUENCES = (1, 7, 64, 65, 300)


PRESET_TASKS = [(preset, task) for preset in PRESETS for task in tasks_for(PRESETS[preset]["model_type"])]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("preset, task", PRESET_TASKS)
def test_export_matches_pytorch(exported, preset, task, exporter):
    path = exported(preset, task, exporter)
    ref = load_model(preset, task)
    model = onnx.load(str(path))
    inputs = {i.name: i for i in model.graph.input}
    assert tuple(inputs) == ref.input_names
    for value in inputs.values():  # batch (choices) and sequence are symbolic, not fixed numbers
        dims = value.type.tensor_type.shape.dim
        assert [d.HasField("dim_param") for d in dims] == [True] * len(ref.input_axes)
    assert [o.name for o in model.graph.output] == list(ref.output_names)

    rng = np.random.default_rng(1)
    with TorchRunner(ref) as torch_runner, OnnxRuntimeRunner(path) as ort_runner:
        for sequence in SEQUENCES:
            feed = random_batch(ref, 3, sequence, rng)
            expected, got = torch_runner.infer(feed), ort_runner.infer(feed)
            for name in ref.output_names:
                assert got[name].shape == expected[name].shape
                err = output_errors(expected[name], got[name], feed["attention_mask"])
                assert err["max_abs"] <= 1e-4, (name, sequence, err)

    stage = read_json(path.parent / "manifest.json")["stages"]["export"]
    assert stage["options"]["exporter"] == exporter
    assert stage["options"]["opset"] == 18
    assert stage["validation"]["max_abs"].keys() == set(ref.output_names)
    assert stage["outputs"]["model"]["path"] == "model.onnx"


def test_default_opset_and_no_external_data_for_small_models(exported):
    path = exported("tiny-deberta-v3", "base", "torchscript")
    model = onnx.load(str(path), load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert not (path.parent / "model.onnx.data").exists()


def test_forced_external_data_round_trips(tmp_path):
    ref = load_model("tiny-deberta-v2", "masked-lm")
    path = export(ref, tmp_path, ExportOptions(exporter="torchscript", external_data=True))
    data = tmp_path / "model.onnx.data"
    assert data.is_file() and data.stat().st_size > 100_000
    assert path.stat().st_size < data.stat().st_size  # the weights live beside the graph
    assert read_json(tmp_path / "manifest.json")["stages"]["export"]["options"]["external_data"] is True
    feed = random_batch(ref, 2, 9, np.random.default_rng(0))
    with TorchRunner(ref) as t, OnnxRuntimeRunner(path) as o:
        err = output_errors(t.infer(feed)["logits"], o.infer(feed)["logits"], feed["attention_mask"])
    assert err["max_abs"] <= 1e-4


def test_token_type_ids_only_when_the_model_has_types():
    assert "token_type_ids" in load_model("tiny-deberta-v2", "base").input_names
    assert "token_type_ids" not in load_model("tiny-deberta-v3", "base").input_names


def test_presets_really_use_relative_attention():
    for name in PRESETS:
        config = load_model(name, "base").config
        assert config.relative_attention is True
        assert list(config.pos_att_type) == ["c2p", "p2c"]
    v3 = load_model("tiny-deberta-v3", "base").config
    assert (v3.position_buckets, v3.max_relative_positions, v3.share_att_key) == (256, 512, True)
    assert v3.norm_rel_ebd == "layer_norm" and v3.position_biased_input is False


def test_presets_are_deterministic():
    a = load_model("tiny-deberta", "base").module.state_dict()
    b = load_model("tiny-deberta", "base").module.state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
