"""The int8 stage's shortcuts decide what the slow ways would: "max" thresholds from the range pass
equal ONNX Runtime's symmetric MinMaxCalibrater, a fallback trial derived from the fully quantized
graph equals quantizing its subset afresh."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from debertrt.calibration import int8 as I
from debertrt.calibration.data import default_dataset, feeds
from debertrt.calibration.fallback import group_nodes
from debertrt.calibration.options import Int8Options
from debertrt.calibration.qdq import build_qdq, check_placement, quantizable_nodes, restrict_qdq
from debertrt.calibration.ranges import collect_ranges
from debertrt.core import onnx_utils as ox
from debertrt.plugins.ort import ort_session

pytestmark = pytest.mark.xdist_group("test_int8_fast")  # module fixtures export and rewrite once


@pytest.fixture(scope="module")
def graphs(exported, tmp_path_factory):
    """{"plain": model.onnx, "plugin": model.plugin.onnx} of the tiny preset (the plugin graph in a folder of ours)."""
    from debertrt.compiler.rewrite import rewrite

    plain = exported("tiny-deberta-v3", "sequence-classification", "torchscript")
    return {"plain": plain, "plugin": rewrite(plain, tmp_path_factory.mktemp("int8-fast") / "model.plugin.onnx").path}


def calibration_feeds(model):
    return feeds(default_dataset("calibration", None, model, batches=3, batch_size=4), [i.name for i in model.graph.input])


@pytest.mark.parametrize("form", ["plain", "plugin"])
def test_max_thresholds_equal_onnxruntime_minmax(form, graphs, tmp_path):
    model = ox.load(graphs[form])
    prepared = I._prepare(model)
    names = I.calibrated_tensors(prepared)
    batches = calibration_feeds(model)
    ours = I.symmetric_minmax(collect_ranges(model, batches, also=names), names)
    theirs = I.calibrate(I._write_prepared(prepared, tmp_path), batches, Int8Options(method="max"), tmp_path)
    assert set(ours.data) == set(theirs.data) and len(names) > 10
    for name in names:
        for mine, ort in zip(ours[name].range_value, theirs[name].range_value):
            assert mine.dtype == ort.dtype and mine.shape == ort.shape, name
            np.testing.assert_allclose(mine, ort, rtol=1e-6, err_msg=name)


def test_a_derived_trial_equals_quantizing_its_subset(graphs, tmp_path):
    model = ox.load(graphs["plain"])
    prepared = I._prepare(model)
    names = I.calibrated_tensors(prepared)
    batches = calibration_feeds(model)
    tensors_range = I.symmetric_minmax(collect_ranges(model, batches, also=names), names)
    candidates = quantizable_nodes(prepared)
    groups = group_nodes(prepared, candidates)
    left_float = {n for g in (list(groups)[0], list(groups)[-1]) for n in groups[g]}
    subset = [n for n in candidates if n not in left_float]
    full = build_qdq(prepared, tensors_range, candidates, dedicated=True)
    derived = restrict_qdq(full, prepared, subset)
    direct = build_qdq(prepared, tensors_range, subset, dedicated=True)
    got, want = check_placement(derived), check_placement(direct)
    assert got == want and set(got["quantized_nodes"]) == set(subset)
    assert check_placement(full)["quantized_nodes"] == sorted(candidates), "deriving left the full graph alone"
    onnx.checker.check_model(derived, full_check=True)
    out_derived, out_direct = (ort_session(m, base_dir=tmp_path).run(None, batches[0]) for m in (derived, direct))
    for a, b in zip(out_derived, out_direct):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
