"""What stages cost, and memory that grows with the model, not with every activation of a batch:
the manifest's time and memory fields, range collection that streams, and refusals before an
out-of-memory kill."""

import subprocess
import sys

import numpy as np
import onnx
import pytest

from debertrt.calibration.fp16 import to_fp16
from debertrt.calibration.ranges import collect_ranges
from debertrt.core import resources
from debertrt.core.artifacts import read_json
from debertrt.core.data import Dataset, TokenSpace, token_batch
from debertrt.core.errors import DebertrtError
from debertrt.core.models import load_model
from debertrt.plugins import ort as ort_module
from debertrt.plugins.ort import ort_session

pytestmark = pytest.mark.xdist_group("test_resources")  # peak memory is measured per process

PRESET, TASK = "tiny-deberta-v3", "sequence-classification"
MIB = 1024 ** 2


def _feed(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


def _inference_growth(onnx_path, feed: dict, tmp_path) -> int:
    """Peak RSS growth of one ONNX Runtime inference, in a fresh process (in this one, memory freed by
    earlier tests is reused and the growth reads low)."""
    np.savez(tmp_path / "feed.npz", **feed)
    code = ("import sys, numpy as np, onnxruntime as ort\n"
            "from debertrt.core import resources\n"
            "feed = dict(np.load(sys.argv[2]))\n"
            "with resources.measure() as m:\n"
            "    ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']).run(None, feed)\n"
            "    print(m.current_peak() - m.start_rss)\n")
    out = subprocess.run([sys.executable, "-c", code, str(onnx_path), str(tmp_path / "feed.npz")],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


def test_a_stage_records_its_cost_and_holds_about_one_inference(exported, tmp_path):
    """At 8 x 256 tokens every intermediate of an 8-layer tiny model takes ~1.3 GiB at once (what range
    collection held when it fetched them all), one inference ~100-300 MiB: the fp16 stage, whose range
    collection and checks run the graph three times, must stay within a few inferences (six, and 128 MiB
    for the allocator: one inference measures 80-300 MiB from run to run, and the bound stays under
    the 1.3 GiB of holding every intermediate)."""
    layers = {"num_hidden_layers": 8}
    onnx_path = exported(PRESET, TASK, "torchscript", layers)
    ref = load_model(PRESET, TASK, config_overrides=layers)
    batch = token_batch(TokenSpace.of(ref), 8, 256, np.random.default_rng(0))
    dataset = Dataset([batch], source="random")

    inference = _inference_growth(onnx_path, _feed(batch), tmp_path)

    to_fp16(onnx_path, tmp_path / "model.fp16.onnx", dataset, ref=ref)
    cost = read_json(tmp_path / "manifest.json")["stages"]["fp16"]["resources"]
    assert cost["wall_s"] > 0 and cost["cpu_s"] > 0 and cost["peak_scope"] == "stage"
    growth = (cost["peak_rss_mib"] - cost["rss_start_mib"]) * MIB
    bound = 6 * inference + 128 * MIB + 16 * onnx_path.stat().st_size
    assert growth <= bound, f"fp16 stage grew {growth / MIB:.0f} MiB, one inference {inference / MIB:.0f} MiB"


def test_a_batch_forecast_not_to_fit_is_refused_before_it_runs(exported, monkeypatch):
    """The first batch is measured; a later, longer one that would need more than is available is
    refused with the fix, instead of the kernel killing the process halfway."""
    onnx_path = exported(PRESET, TASK, "torchscript")
    space = TokenSpace.of(load_model(PRESET, TASK))
    rng = np.random.default_rng(1)
    feeds = [_feed(token_batch(space, 2, 16, rng)), _feed(token_batch(space, 8, 256, rng))]
    model = onnx.load(str(onnx_path))
    available = iter([64 * 1024 * MIB, 1 * MIB])  # plenty for the session, then almost nothing
    monkeypatch.setattr(resources, "available_bytes", lambda: next(available))
    with pytest.raises(DebertrtError, match=r"batch 1, shape 8x256.*--batch-size or --max-length"):
        collect_ranges(model, feeds)


def test_weights_that_do_not_fit_are_refused_before_the_session(exported, monkeypatch):
    model = onnx.load(str(exported(PRESET, TASK, "torchscript")))
    monkeypatch.setattr(resources, "available_bytes", lambda: 1 * MIB)
    with pytest.raises(DebertrtError, match="more memory"):
        collect_ranges(model, [])


def test_a_large_in_memory_model_reaches_the_session_through_a_file_and_keeps_its_weights(
        exported, tmp_path, monkeypatch):
    """Past the size served as bytes, the weights are streamed beside a temporary graph; the
    caller's model keeps them (saving with external data would clear them) and both runs agree."""
    onnx_path = exported(PRESET, TASK, "torchscript")
    model = onnx.load(str(onnx_path))
    before = model.SerializeToString()
    feed = _feed(token_batch(TokenSpace.of(load_model(PRESET, TASK)), 2, 16, np.random.default_rng(2)))
    expected = ort_session(model).run(None, feed)
    monkeypatch.setattr(ort_module, "SERIALIZE_LIMIT", 0)
    got = ort_session(model, base_dir=tmp_path).run(None, feed)
    assert model.SerializeToString() == before
    assert list(tmp_path.iterdir()) == []  # the temporary graph and its data are gone
    np.testing.assert_array_equal(got[0], expected[0])


def test_a_sum_that_overflows_on_finite_values_is_no_alarm(exported, monkeypatch):
    """Masks filled with -3.4e38 sum to -inf; only an inf in the max or min or a NaN sum reruns a
    batch to name the tensor (a rerun costs a session and a pass over the graph)."""
    from debertrt.calibration import ranges

    model = onnx.load(str(exported(PRESET, TASK)))
    feed = _feed(token_batch(TokenSpace.of(load_model(PRESET, TASK)), 4, 32, np.random.default_rng(3)))
    monkeypatch.setattr(ranges, "_raise_non_finite", lambda *a: pytest.fail(f"rerun for {a[1]}"))
    found = collect_ranges(model, [feed])
    assert max(found.amax.values()) > 1e38  # the masks are there


@pytest.mark.parametrize("external", [False, True])
def test_models_are_written_one_initializer_at_a_time_and_left_unchanged(exported, tmp_path, external):
    """The streamed writer reads back as the same model, with or without external data, and the
    model it was given keeps its weights; the streamed reader reads what ``onnx.load`` reads; a copy
    with weight stubs written with the model's weights is the same file."""
    from debertrt.core.onnx_utils import load, with_weight_stubs, write_model

    model = onnx.load(str(exported(PRESET, TASK)))
    before = model.SerializeToString()
    write_model(model, tmp_path / "model.onnx", external=external)
    assert model.SerializeToString() == before
    assert (tmp_path / "model.onnx.data").is_file() == external
    onnx.checker.check_model(str(tmp_path / "model.onnx"), full_check=True)
    back = onnx.load(str(tmp_path / "model.onnx"))
    if not external:
        assert back == model
    for a, b in zip(model.graph.initializer, back.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
    assert load(tmp_path / "model.onnx") == back
    stubs = with_weight_stubs(model)
    held = [sum(len(i.raw_data) for i in m.graph.initializer) for m in (stubs, model)]
    assert held[0] < held[1] // 10
    (tmp_path / "stubs").mkdir()
    write_model(stubs, tmp_path / "stubs" / "model.onnx", external=external, weights=model)
    for name in ["model.onnx"] + ["model.onnx.data"] * external:
        assert (tmp_path / "stubs" / name).read_bytes() == (tmp_path / name).read_bytes()
