"""The int8 stage's shortcuts decide what the slow ways would: "max" thresholds from the range pass
equal ONNX Runtime's symmetric MinMaxCalibrater, a fallback trial derived from the fully quantized
graph equals quantizing its subset afresh, and the plugin graph starts from the plain graph's decision."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from debertrt.calibration import int8 as I
from debertrt.calibration.data import default_dataset, feeds
from debertrt.calibration.fallback import accuracy_fallback, group_nodes
from debertrt.calibration.options import Int8Options
from debertrt.calibration.qdq import build_qdq, check_placement, quantizable_nodes, restrict_qdq
from debertrt.calibration.ranges import collect_ranges
from debertrt.core import onnx_utils as ox
from debertrt.core.artifacts import read_json
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


class FakeScorer:
    """Group "b" costs most, then "c"; "a" is harmless (the model is the list of quantized nodes)."""

    cost = {"a": 0.0, "b": 0.04, "c": 0.02}
    metric, fp32 = "accuracy", (0.90, 0.0)

    def __init__(self):
        self.calls = 0

    def __call__(self, nodes):
        self.calls += 1
        loss = sum(self.cost[g] for g in {n[0] for n in nodes})
        return 0.90 - loss, loss


def test_a_sibling_decision_within_budget_is_one_trial_else_the_search_runs():
    groups = {g: [g + "1", g + "2"] for g in FakeScorer.cost}
    scorer = FakeScorer()
    sibling = {"b": ["b1", "b2"], "pooler": ["p1"]}
    model, record = accuracy_fallback(lambda nodes: nodes, groups, scorer, 0.03, sibling)
    assert scorer.calls == 1 and record["excluded"] == ["b"] and sorted(model) == ["a1", "a2", "c1", "c2"]
    assert record["sibling"]["within_budget"] and record["sibling"]["unmatched"] == ["pooler"]
    assert record["full"] is None and record["within_budget"]

    # matched by node name: here a graph without scope metadata, one group per node
    scorer = FakeScorer()
    by_node = {n: [n] for names in groups.values() for n in names}
    model, record = accuracy_fallback(lambda nodes: nodes, by_node, scorer, 0.03, sibling)
    assert scorer.calls == 1 and record["excluded"] == ["b1", "b2"] and sorted(model) == ["a1", "a2", "c1", "c2"]

    scorer = FakeScorer()  # "a" left in float is not enough here: the search from scratch decides
    model, record = accuracy_fallback(lambda nodes: nodes, groups, scorer, 0.03, {"a": ["a1", "a2"]})
    assert not record["sibling"]["within_budget"] and record["trials"][0]["excluded"] == ["a"]
    assert record["excluded"] == ["b"] and record["full"]["metric"] == pytest.approx(0.84)
    assert scorer.calls == 1 + 1 + len(groups)  # the sibling's, all int8, one per group

    # a sibling that quantized everything: its trial is the all-int8 one, the search the same as without it
    searches = []
    for nothing in ({}, None):
        scorer = FakeScorer()
        model, record = accuracy_fallback(lambda nodes: nodes, groups, scorer, 0.03, nothing)
        searches.append((record["trials"], record["excluded"], scorer.calls))
    assert searches[0] == searches[1] and searches[0][2] == 1 + len(groups)


def test_plugin_graph_has_the_plain_graphs_groups_and_starts_from_its_decision(graphs, tmp_path):
    plain, plugin = (I._prepare(ox.load(graphs[f])) for f in ("plain", "plugin"))
    groups = {f: group_nodes(m, quantizable_nodes(m)) for f, m in (("plain", plain), ("plugin", plugin))}
    assert groups["plain"] == groups["plugin"]  # a torchscript export: scopes are in the node names
    first = list(groups["plain"])[0]
    decision = {first: groups["plain"][first]}
    result = I.quantize_int8(graphs["plugin"], tmp_path / "model.plugin.int8.onnx", task="sequence-classification",
                             options=Int8Options(max_accuracy_loss=0.5), sibling_float_groups=decision)
    fallback = read_json(result.report)["fallback"]
    assert len(fallback["trials"]) == 1 and fallback["sibling"]["within_budget"]
    assert result.summary["float_groups"] == [first] and result.summary["int8_full"] is None
    assert result.summary["float_group_nodes"] == decision
    assert f"Started from a sibling graph's decision (left in float there: {first})" in \
        result.report.with_suffix(".md").read_text()
