"""The int8 accuracy-driven fallback: which MatMul groups stay in float.

Accuracy-driven fallback (``max_accuracy_loss``, relative): the task metric (accuracy
when the fallback scoring data has labels, else agreement with the fp32 graph's predictions)
is measured for fp32 and the fully quantized graph; when the loss exceeds the budget,
each group of MatMuls (an encoder layer, or the pooler / classifier / embedding
projections) is left in float alone to measure how much it costs, and groups are
excluded most harmful first until the metric is within budget.

A sibling graph's decision (the plugin graph reusing the plain graph's float groups) is tried
first: when it is within budget here too, that one trial decides; else the search runs as above.
It is matched by node name, not by group label: the rewrite keeps the MatMul/Gemm names (and their
scopes), and a name does not depend on how a graph's nodes are grouped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from debertrt.core import onnx_utils as ox
from debertrt.core.compare import LABELLED_TASKS, TaskAgreement, accuracy, predictions, row_cosines
from debertrt.plugins.ort import one_shot_options, ort_session

from .data import feeds


def group_nodes(model, names: list[str], granularity: str = "layer") -> dict[str, list[str]]:
    """Fallback units in graph order: ``layer.N``, or the module (pooler, classifier, ...), or the node."""
    if granularity == "node":
        return {n: [n] for n in names}
    scopes = ox.node_scopes(model)
    nodes = {n.name: n for n in model.graph.node}
    groups: dict[str, list[str]] = {}
    for name in names:
        node = nodes[name]
        label = ox.layer_label(node, scopes)
        if not label.startswith("layer."):
            scope = scopes.get(name, "")
            parts = [p for p in scope.replace("/", ".").split(".") if p and p not in ("model", "deberta")]
            label = ".".join(parts[:2]) if parts else name
        groups.setdefault(label, []).append(name)
    return groups


class Scorer:
    """The task metric of a graph on the fallback scoring data, against the fp32 graph."""

    def __init__(self, fp32_model, dataset, task: str | None, tmp: Path):
        self.dataset = dataset
        self.task = task
        self.tmp = tmp
        self.input_names = [i.name for i in fp32_model.graph.input]
        self.feeds = feeds(dataset, self.input_names)
        self.reference = self._run(fp32_model)
        self.labels = dataset.labels if (dataset.labels is not None and task in LABELLED_TASKS) else None
        if self.labels is not None:
            self.metric = "accuracy"
        else:  # agreement with fp32's predictions; a model that predicts nothing (base): its hidden states' cosine
            self.metric = "agreement" if predictions(task or "", self.reference[0]) else "cosine"
        self.fp32 = self.score_outputs(self.reference)
        self.calls = 0

    def _run(self, model) -> list[dict]:
        sess = ort_session(model, base_dir=self.tmp, options=one_shot_options())
        return [{n: np.asarray(v, np.float32) for n, v in out.items()}
                for out in ox.run_batches(sess, self.feeds, what="fallback batch")]

    def score_outputs(self, outputs: list[dict]) -> tuple[float, float]:
        """(task metric, mean squared output error vs fp32)."""
        err = float(np.mean([np.mean((o[n] - r[n]) ** 2) for o, r in zip(outputs, self.reference) for n in o]))
        if self.metric == "accuracy":
            return accuracy(self.task, outputs, self.labels)["value"], err
        if self.metric == "agreement":
            agreement = TaskAgreement(self.task)
            for feed, ref, out in zip(self.feeds, self.reference, outputs):
                agreement.update(ref, out, feed["attention_mask"])
            return agreement.headline(), err
        cosines = [row_cosines(r[n], o[n], feed["attention_mask"])
                   for feed, r, o in zip(self.feeds, self.reference, outputs) for n in o]
        return float(np.mean(np.concatenate(cosines))), err

    def __call__(self, model) -> tuple[float, float]:
        self.calls += 1
        return self.score_outputs(self._run(model))


def accuracy_fallback(build, groups: dict[str, list[str]], scorer: Scorer, max_loss: float | None,
                      sibling_float_groups: dict[str, list[str]] | None = None):
    """Quantize every group, then leave the most harmful groups in float until the metric is
    within ``max_loss`` (relative) of fp32. Returns (model, record of what was measured).

    ``sibling_float_groups``: a sibling graph's decision (group -> node names it left in float), scored
    first (every group here holding one of those nodes left in float) when there is a budget; within
    it, that is the result (one trial), else the search runs from the start (with the sibling's trial
    as the fully quantized one when it left nothing in float)."""
    all_nodes = [n for names in groups.values() for n in names]
    fp32_metric = scorer.fp32[0]
    budget = None if max_loss is None else fp32_metric * (1 - max_loss)
    record = {"metric": scorer.metric, "fp32": fp32_metric, "budget": budget, "max_accuracy_loss": max_loss,
              "groups": {g: len(n) for g, n in groups.items()}, "trials": [], "excluded": [], "full": None}
    if sibling_float_groups is not None and budget is not None:
        wanted = {n for names in sibling_float_groups.values() for n in names}
        hinted = [g for g, names in groups.items() if wanted & set(names)]
        model = build([n for g, names in groups.items() if g not in hinted for n in names])
        metric, err = scorer(model)
        record["trials"].append({"excluded": hinted, "metric": metric, "mse": err})
        here = set(all_nodes)
        record["sibling"] = {"float_groups": list(sibling_float_groups), "matched": hinted,
                             "unmatched": [g for g, names in sibling_float_groups.items() if not here & set(names)],
                             "metric": metric, "mse": err, "within_budget": metric >= budget}
        if not hinted:  # the sibling quantized everything: that trial is the fully quantized one
            record["full"] = {"metric": metric, "mse": err}
        if metric >= budget:
            record.update(excluded=hinted, final=metric, final_mse=err, within_budget=True)
            return model, record
    if record["full"] is None:
        model = build(all_nodes)
        metric, err = scorer(model)
        record["full"] = {"metric": metric, "mse": err}
        record["trials"].append({"excluded": [], "metric": metric, "mse": err})
        if budget is None or metric >= budget:
            record.update(final=metric, final_mse=err, within_budget=True)
            return model, record

    sensitivity = {}
    for group, names in groups.items():  # leave one group in float: what does it cost?
        keep = [n for n in all_nodes if n not in set(names)]
        m, e = scorer(build(keep))
        sensitivity[group] = {"metric_without": m, "mse_without": e}
        record["trials"].append({"excluded": [group], "metric": m, "mse": e})
    record["sensitivity"] = sensitivity
    order = sorted(groups, key=lambda g: (-sensitivity[g]["metric_without"], sensitivity[g]["mse_without"]))
    excluded: list[str] = []
    for group in order:
        excluded.append(group)
        keep = [n for g, names in groups.items() if g not in excluded for n in names]
        model = build(keep)
        if len(excluded) == 1:  # measured above already
            metric, err = sensitivity[group]["metric_without"], sensitivity[group]["mse_without"]
        else:
            metric, err = scorer(model)
            record["trials"].append({"excluded": list(excluded), "metric": metric, "mse": err})
        if metric >= budget:
            break
    record.update(excluded=excluded, final=metric, final_mse=err, within_budget=metric >= budget)
    return model, record
