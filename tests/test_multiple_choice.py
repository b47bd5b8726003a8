"""Multiple choice, the sixth task: [batch, choices, sequence] inputs dynamic in all three, through
export, rewrite, fp16/int8, engine profiles with a choices axis, and parity judged by choice
agreement (and accuracy with labelled data)."""

import json

import numpy as np
import onnx
import pytest

from debertrt.compiler.cli import main
from debertrt.compiler.engine import EngineOptions, build_engine
from debertrt.compiler.parity import parity
from debertrt.core.compare import TaskAgreement, output_errors
from debertrt.core.data import TokenSpace, random_dataset, text_dataset, token_batch
from debertrt.core.errors import DebertrtError
from debertrt.core.models import load_model
from debertrt.runtime.engine_json import EngineMetadata
from debertrt.runtime.profiles import Profile
from debertrt.runtime.runners import OnnxRuntimeRunner, TorchRunner
from debertrt.runtime.tensorrt import FLAVOURS
from fixtures.chain import chain_artifacts

pytestmark = pytest.mark.xdist_group("test_multiple_choice")  # module fixtures build artifacts once

requires_rtx = pytest.mark.skipif(not FLAVOURS["tensorrt-rtx"].available(),
                                  reason="TensorRT-RTX is not installed (pip install 'debertrt[rtx]')")
TASK = "multiple-choice"


@pytest.fixture(scope="module")
def ref():
    return load_model("tiny-deberta-v3", TASK)


@pytest.fixture(scope="module")
def chain(exported, ref, tmp_path_factory):
    """The plain export, the plugin graph and fp16/int8 of the plugin graph."""
    return chain_artifacts(ref, exported("tiny-deberta-v3", TASK, "torchscript"), tmp_path_factory.mktemp("mc"))


def test_v1_has_no_multiple_choice_head(tmp_path, capsys):
    with pytest.raises(DebertrtError, match="DeBERTa v1 has no multiple-choice head"):
        load_model("tiny-deberta", TASK)
    code = main(["export", "--model", "tiny-deberta", "--task", TASK, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "DebertaForMultipleChoice" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_is_dynamic_in_batch_choices_and_sequence(exported, ref, exporter):
    """Exported at [2, 3, 16]; run at other sizes of every axis, beyond 512 tokens too."""
    path = exported("tiny-deberta-v3", TASK, exporter)
    model = onnx.load(str(path))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        assert [d.HasField("dim_param") for d in dims] == [True, True, True]
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.HasField("dim_param") for d in model.graph.output[0].type.tensor_type.shape.dim] == [True, True]
    rng = np.random.default_rng(0)
    with TorchRunner(ref) as torch_runner, OnnxRuntimeRunner(path) as ort_runner:
        for batch, choices, sequence in ((1, 1, 1), (3, 5, 40), (2, 2, 600)):
            feed = token_batch(TokenSpace.of(ref), batch, sequence, rng, choices=choices)
            expected, got = torch_runner.infer(feed)["logits"], ort_runner.infer(feed)["logits"]
            assert got.shape == (batch, choices)
            assert output_errors(expected, got, feed["attention_mask"])["max_abs"] <= 1e-4


def test_rewrite_fp16_int8_and_parity_by_choice_agreement(chain, ref, tmp_path):
    dataset = random_dataset(ref, batches=2, batch_size=4, max_sequence=40, seed=0)
    assert dataset.batches[0]["input_ids"].shape == (4, 4, 40)
    artifacts = [chain[k] for k in ("fp32", "plugin", "fp16", "int8")]
    result = parity(ref, artifacts, dataset, tmp_path / "mc")
    entries = {e["path"]: e for e in result["artifacts"]}
    for key in ("fp32", "plugin", "fp16"):
        entry = entries[str(chain[key])]
        assert entry["verdict"] == "passed", (key, entry["criteria"])
        assert entry["task"]["agreement"]["choice"] == 1.0
    int8 = entries[str(chain["int8"])]
    assert "choice" in int8["task"]["agreement"]
    assert any(c["criterion"] == "prediction agreement" for c in int8["criteria"])
    assert "choice" in (tmp_path / "mc.md").read_text()


def test_parity_reports_accuracy_on_labelled_choices(text_checkpoint, tmp_path):
    from conftest import WORDS

    ref = load_model(str(text_checkpoint("tiny-deberta-v3", TASK)), TASK)
    records = [{"text": " ".join(WORDS[k:k + 4]), "choices": [" ".join(WORDS[k + j:k + j + 3]) for j in range(3)],
                "label": k % 3} for k in range(8)]
    data = tmp_path / "mc.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    from debertrt.compiler.export import ExportOptions, export

    onnx_path = export(ref, tmp_path / "art", ExportOptions(exporter="torchscript"))
    result = parity(ref, [onnx_path], text_dataset(ref, data, batch_size=3), tmp_path / "r")
    task = result["artifacts"][0]["task"]
    assert task["metric"] == "accuracy" and task["artifact"] == task["reference"]
    assert task["agreement"]["choice"] == 1.0 and result["verdict"] == "passed"


def test_choice_agreement_can_fail():
    agreement = TaskAgreement(TASK)
    mask = np.ones((2, 3, 4), np.int64)
    agreement.update({"logits": np.array([[0, 1, 0], [2, 0, 0.]])}, {"logits": np.array([[0, 1, 0], [0, 0, 2.]])},
                     mask)
    assert agreement.result() == {"choice": 0.5} and agreement.headline() == 0.5


def test_runners_take_batch_choices_sequence(chain, ref):
    feed = token_batch(TokenSpace.of(ref), 2, 9, np.random.default_rng(0), choices=3)
    with OnnxRuntimeRunner(chain["fp32"]) as runner:
        assert runner.infer(feed)["logits"].shape == (2, 3)
        flat = {k: v.reshape(6, 9) for k, v in feed.items()}
        with pytest.raises(DebertrtError, match=r"must be a non-empty \[batch, choices, sequence\] array"):
            runner.infer(flat)


def test_profiles_have_a_choices_axis():
    profile = Profile.parse("batch=1:2:4,choices=2:4:8,sequence=1:16:64")
    assert str(profile) == "batch=1:2:4,choices=2:4:8,sequence=1:16:64"
    assert profile.shapes() == ((1, 2, 1), (2, 4, 16), (4, 8, 64))
    assert profile.contains(4, 64, 8) and not profile.contains(4, 64, 9) and not profile.contains(4, 64)
    assert Profile.from_dict(profile.to_dict()) == profile
    assert Profile().for_rank(3).choices == (1, 4, 8)
    with pytest.raises(DebertrtError, match="no choices axis"):
        profile.for_rank(2)
    with pytest.raises(DebertrtError, match="min <= opt <= max"):
        Profile.parse("choices=4:2:8")


@requires_rtx
def test_rtx_engine_with_a_choices_profile(chain, tmp_path):
    profile = "batch=1:2:4,choices=2:4:8,sequence=1:16:64"
    plan = build_engine(chain["fp32"], tmp_path, EngineOptions(backend="tensorrt-rtx", optimization_level=0,
                                                               profiles=(profile,)))
    meta = EngineMetadata(plan)
    assert meta.data["profiles"] == [Profile.parse(profile).to_dict()]
    assert meta.input_rank == 3 and all(t["shape"] == [-1, -1, -1] for t in meta.data["inputs"])
    assert meta.check_shapes({n: (2, 4, 16) for n in meta.input_names}) == 0
    with pytest.raises(DebertrtError, match="9 choices exceed the engine's maximum 8"):
        meta.check_shapes({n: (2, 9, 16) for n in meta.input_names})
    with pytest.raises(DebertrtError, match=r"takes \[batch, choices, sequence\]"):
        meta.check_shapes({n: (2, 16) for n in meta.input_names})
    default = build_engine(chain["fp32"], tmp_path, EngineOptions(backend="tensorrt-rtx", optimization_level=0,
                                                                  profiles=("batch=1:2:4,sequence=1:16:64",)),
                           name="default-choices")
    assert EngineMetadata(default).profiles[0].choices == (1, 4, 8)
