"""Precision stage, int8: ``model.onnx`` -> ``model.int8.onnx`` with explicit Q/DQ where TensorRT fuses them.

Placement: ``calibration.qdq``. Ranges: for "max", the min and max that ``collect_ranges`` streams
anyway (one pass; the thresholds ONNX Runtime's symmetric ``MinMaxCalibrater`` would give); for
the others ONNX Runtime's calibrators (Percentile, Entropy; "mse" searches the clipping threshold
minimising the expected squared error on the |x| histogram the Percentile calibrator collects).
ONNX Runtime's ``QDQQuantizer`` writes the Q/DQ once, for every candidate (format QDQ, int8
symmetric activations and per-channel symmetric weights, no bias quantization, no output
quantization); a small pass then keeps DequantizeLinear outputs away from anything but the
MatMul/Gemm nodes chosen (ORT rewires every consumer of a quantized tensor), which is also how
each fallback trial is derived from that one quantized graph.

Accuracy-driven fallback: ``calibration.fallback``.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from debertrt.core.artifacts import StageResult, record_stage, sha256, sibling, write_json, write_text
from debertrt.core.errors import DebertrtError, InternalError, first_line

from debertrt.core import onnx_utils as ox
from debertrt.core.resources import measured, release_memory
from debertrt.plugins.graph_types import value_types

from . import graph as G
from .data import BatchReader, default_dataset, check_dataset, feeds, vocab_size
from .options import Int8Options
from .fallback import Scorer, accuracy_fallback, group_nodes
from .qdq import QUANTIZED_OPS, build_qdq, check_placement, quantizable_nodes, restrict_qdq
from .ranges import collect_ranges


def int8_path_for(onnx_path: str | os.PathLike) -> Path:
    """model.onnx -> model.int8.onnx, model.plugin.onnx -> model.plugin.int8.onnx."""
    return sibling(onnx_path, ".int8.onnx")


# ----------------------------------------------------------------------------- the stage


@measured
def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike | None = None, dataset=None,
                  method: str | None = None, *, ref=None, task: str | None = None, fallback_dataset=None,
                  options: Int8Options | None = None,
                  sibling_float_groups: dict[str, list[str]] | None = None) -> StageResult:
    """Write the int8 Q/DQ graph of ``onnx_path`` (default ``DIR/model.int8.onnx``), its report and manifest entry.

    ``dataset``: calibration batches; ``fallback_dataset``: what the accuracy-driven fallback
    scores. Both default to ``calibration.data.default_dataset`` (the preset's own held-out
    sets, or random batches from ``ref`` or the graph, a seed per purpose): the two never share
    examples, and neither is the parity set. ``task`` defaults to ``ref.task``.
    ``sibling_float_groups``: what the int8 stage of another form of the same model (the plugin graph's
    plain sibling) left in float, its summary's ``float_group_nodes`` (group -> MatMul/Gemm node names);
    the fallback tries that decision first (``accuracy_fallback``).
    """
    options = options or Int8Options()
    if method is not None and method != options.method:
        options = Int8Options(**{**asdict(options), "method": method})
    src = Path(onnx_path)
    out = Path(out_path) if out_path is not None else int8_path_for(src)
    model = ox.load(src)
    ox.require_fp32(model, src.name, "int8")
    input_names = [i.name for i in model.graph.input]
    vocab = vocab_size(model)
    if dataset is None:
        dataset = default_dataset("calibration", ref, model)
    check_dataset(dataset, input_names, vocab)
    if fallback_dataset is None:
        fallback_dataset = default_dataset("fallback", ref, model)
    check_dataset(fallback_dataset, input_names, vocab, what="fallback")
    task = task or getattr(ref, "task", None)
    calib_feeds = feeds(dataset, input_names)
    out.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=".debertrt-int8.", dir=out.parent) as tmp:
        tmp = Path(tmp)
        prepared = _prepare(model)
        del model
        calibrated = calibrated_tensors(prepared)
        # raises on non-finite activations; keeps min and max of every tensor a calibrator would measure
        ranges = collect_ranges(prepared, calib_feeds, workdir=tmp, also=calibrated)
        release_memory()  # the range session's pages, before the quantized copy is made
        candidates = quantizable_nodes(prepared, options.quantize_bmm)
        if not candidates:
            raise DebertrtError(f"{src.name} has no MatMul/Gemm with a weight input: nothing to quantize")
        if options.method == "max":
            tensors_range = symmetric_minmax(ranges, calibrated)
        else:
            tensors_range = calibrate(_write_prepared(prepared, tmp), calib_feeds, options, tmp)
        groups = group_nodes(prepared, candidates, options.granularity)
        scorer = Scorer(prepared, fallback_dataset, task, tmp)
        # quantized once; a trial leaving groups in float gives their MatMuls the float tensors back
        full = build_qdq(prepared, tensors_range, candidates, options.dedicated_qdq)

        def build(nodes):
            return full if len(nodes) == len(candidates) else restrict_qdq(full, prepared, nodes)

        final, fallback = accuracy_fallback(build, groups, scorer, options.max_accuracy_loss,
                                            sibling_float_groups)
        placement = check_placement(final)
        ox.save(final, out, check="full")

    report = _report(src, out, prepared, dataset, fallback_dataset, task, options, ranges, tensors_range, groups, fallback,
                     placement)
    json_path, md_path = G.report_paths(out)
    write_json(json_path, report)
    write_text(md_path, render_markdown(report))
    stage = "int8" if src.name == "model.onnx" else f"int8:{src.name}"
    record_stage(out.parent, stage, inputs={"model": src.name, "sha256": sha256(src)},
                 options={**asdict(options), "data": report["data"]},
                 outputs={"model": out, "report": json_path}, extra={"summary": report["summary"]})
    return StageResult(out, json_path, report["summary"])


# ----------------------------------------------------------------------------- graph preparation


def _prepare(prepared):
    """``prepared`` itself, every tensor typed (plugin outputs included) and weight transposes folded: in
    place, so that the stage holds one copy of the weights (the fp32 graph computes the same with them)."""
    import onnx

    ox.name_nodes(prepared)
    G.fold_weight_transposes(prepared)
    types = value_types(prepared)
    io_names = {i.name for i in prepared.graph.input} | {o.name for o in prepared.graph.output} \
        | {i.name for i in prepared.graph.initializer}
    del prepared.graph.value_info[:]
    for node in prepared.graph.node:
        for out in node.output:
            if out and out in types and out not in io_names:
                prepared.graph.value_info.append(onnx.helper.make_value_info(out, types[out]))
    return prepared


def _write_prepared(prepared, tmp: Path) -> Path:
    """``prepared`` saved for ONNX Runtime's calibrators (they read a file)."""
    path = tmp / "prepared.onnx"
    ox.write_model(prepared, path, external=True)  # weights streamed beside it, ``prepared`` unchanged
    return path


# ----------------------------------------------------------------------------- calibration


def calibrated_tensors(prepared) -> list[str]:
    """What ONNX Runtime's calibrators measure (``select_tensors_to_calibrate``): the typed float
    inputs and outputs of every MatMul/Gemm that are not initializers, in graph order."""
    from onnx import TensorProto

    graph = prepared.graph
    typed = {vi.name: vi.type for vi in list(graph.value_info) + list(graph.output) + list(graph.input)}
    inits = {i.name for i in graph.initializer}
    names: dict[str, None] = {}
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        for name in list(node.input) + list(node.output):
            t = typed.get(name)
            if t is not None and t.HasField("tensor_type") and name not in inits \
                    and t.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16):
                names[name] = None
    return list(names)


def symmetric_minmax(ranges, names: list[str]):
    """The ``TensorsData`` ONNX Runtime's ``MinMaxCalibrater(symmetric=True)`` computes, from the min and
    max ``collect_ranges`` measured: per tensor (-t, t), t = max(|min|, |max|) over all batches, as
    float32 arrays of shape (1,)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    data = {}
    for name in names:
        if name not in ranges.lowest:
            raise InternalError(f"range collection did not measure {name!r}, a MatMul/Gemm tensor")
        t = max(abs(np.float32(ranges.lowest[name])), abs(np.float32(ranges.highest[name])))
        data[name] = TensorData(lowest=np.array([-t], np.float32), highest=np.array([t], np.float32))
    return TensorsData(CalibrationMethod.MinMax, data)


def calibrate(prepared_path: Path, feed_list: list[dict], options: Int8Options, tmp: Path):
    """``TensorsData`` of the MatMul/Gemm activations with ONNX Runtime's calibrators (the tests check
    ``symmetric_minmax`` against its MinMax)."""
    from onnxruntime.quantization.calibrate import (EntropyCalibrater, MinMaxCalibrater, PercentileCalibrater,
                                                    TensorData, TensorsData, CalibrationMethod)
    from debertrt.plugins.ort import ort_session

    aug = str(tmp / "augmented.onnx")
    kwargs = dict(op_types_to_calibrate=list(QUANTIZED_OPS), augmented_model_path=aug, symmetric=True,
                  use_external_data_format=os.path.getsize(f"{prepared_path}.data") > ox.PROTOBUF_LIMIT // 2)
    if options.method == "max":
        calibrator = MinMaxCalibrater(str(prepared_path), **kwargs)
    elif options.method == "entropy":
        calibrator = EntropyCalibrater(str(prepared_path), num_bins=128, num_quantized_bins=128, **kwargs)
    else:  # percentile, and mse on the same |x| histogram
        calibrator = PercentileCalibrater(str(prepared_path), num_bins=options.num_bins,
                                          percentile=options.percentile, **kwargs)
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram collector prints progress
        calibrator.augment_graph()
        calibrator.infer_session = ort_session(aug)  # knows the DisentangledAttention reference op
        try:
            for feed in feed_list:  # one batch at a time: histogram calibrators keep every output otherwise
                calibrator.collect_data(BatchReader([feed]))
            if options.method == "mse":
                data = TensorsData(CalibrationMethod.Percentile, {
                    name: TensorData(lowest=np.array(-t, np.float32), highest=np.array(t, np.float32))
                    for name, t in mse_thresholds(calibrator.collector.histogram_dict).items()})
            else:
                data = calibrator.compute_data()
        except ValueError as exc:  # numpy/ORT on inf or NaN in a histogram
            raise DebertrtError(f"calibration failed ({first_line(exc)}): the activations hold "
                                f"non-finite values") from exc
    for name, td in data.items():
        lo, hi = float(np.min(td.range_value[0])), float(np.max(td.range_value[1]))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise DebertrtError(f"calibration range of {name!r} is not finite ({lo}, {hi}): the activations hold "
                                f"inf/NaN on the calibration data")
    return data


def mse_thresholds(histograms: dict, candidates: int = 128) -> dict[str, float]:
    """Per tensor, the clipping threshold t minimising Σ count·err² over a |x| histogram, with
    err² = (t/127)²/12 (rounding) below t and (x - t)² (clipping) above it."""
    found = {}
    for name, entry in histograms.items():
        hist, edges = np.asarray(entry[0], np.float64), np.asarray(entry[1], np.float64)
        amax = float(edges[-1])
        if amax <= 0 or hist.sum() == 0:
            found[name] = max(amax, 1e-8)
            continue
        centers = (edges[:-1] + edges[1:]) / 2
        best_t, best_err = amax, np.inf
        for t in np.linspace(amax / candidates, amax, candidates):
            clipped = centers > t
            err = hist[~clipped].sum() * (t / 127) ** 2 / 12 + (hist[clipped] * (centers[clipped] - t) ** 2).sum()
            if err < best_err:
                best_t, best_err = float(t), err
        found[name] = best_t
    return found


# ----------------------------------------------------------------------------- report


def _report(src, out, model, dataset, fallback_dataset, task, options, ranges, tensors_range, groups, fallback, placement):
    quantized = set(placement["quantized_nodes"])
    layers = []
    for group, names in groups.items():
        done = sum(n in quantized for n in names)
        layers.append({"group": group, "matmuls": len(names), "quantized": done,
                       "precision": "int8" if done == len(names) else ("fp32" if done == 0 else "mixed")})
    act = []
    inputs_of_quantized = {i for node in model.graph.node if node.name in quantized for i in node.input}
    for name, td in tensors_range.items():
        if name not in inputs_of_quantized:
            continue
        lo, hi = float(np.min(td.range_value[0])), float(np.max(td.range_value[1]))
        act.append({"tensor": name, "threshold": max(abs(lo), abs(hi)), "max_abs": ranges.get(name)})
    act.sort(key=lambda a: -a["threshold"])
    loss = None
    if fallback["fp32"]:
        loss = (fallback["fp32"] - fallback["final"]) / fallback["fp32"]
    summary = {"method": options.method, "metric": fallback["metric"], "fp32": fallback["fp32"],
               "int8_full": (fallback["full"] or {}).get("metric"), "int8": fallback["final"],
               "relative_loss": loss,
               "within_budget": fallback["within_budget"], "quantized_matmuls": len(quantized),
               "candidate_matmuls": sum(len(n) for n in groups.values()),
               "float_groups": [l["group"] for l in layers if l["precision"] != "int8"],
               "float_group_nodes": {g: [n for n in names if n not in quantized] for g, names in groups.items()
                                     if any(n not in quantized for n in names)},
               "qdq": {"quantize_linear": placement["quantize_linear"],
                       "dequantize_linear": placement["dequantize_linear"],
                       "quantized_weights": placement["quantized_weights"]}}
    return {"source": src.name, "output": out.name, "task": task, "options": asdict(options),
            "data": {"calibration": dataset.describe(), "fallback": fallback_dataset.describe()},
            "summary": summary, "layers": layers, "fallback": fallback, "activation_ranges": act}


def render_markdown(report: dict) -> str:
    s, f = report["summary"], report["fallback"]
    budget = "no fallback" if f["budget"] is None else \
        f"budget {f['max_accuracy_loss']:.2%} relative (≥ {f['budget']:.4f})"

    def pct(v):
        return "-" if v is None else f"{v:.4f}"

    lines = [
        f"# int8 quantization: {report['source']} → {report['output']}",
        "",
        f"Calibration: {report['data']['calibration']['source']} ({report['data']['calibration']['examples']} examples), "
        f"method **{s['method']}**; Q/DQ on {s['quantized_matmuls']} of {s['candidate_matmuls']} weight "
        f"MatMul/Gemm inputs ({s['qdq']['quantize_linear']} Q, {s['qdq']['dequantize_linear']} DQ, "
        f"{s['qdq']['quantized_weights']} per-channel int8 weights).",
        "",
        f"Task metric ({s['metric']} on {report['data']['fallback']['source']}, {report['data']['fallback']['examples']} "
        f"examples): fp32 {pct(s['fp32'])}, all int8 {pct(s['int8_full'])}, final {pct(s['int8'])} — {budget}: "
        f"**{'within budget' if s['within_budget'] else 'NOT within budget'}**.",
        "",
        "## Layers",
        "",
        "| group | MatMul/Gemm | quantized | precision |",
        "|---|---|---|---|",
    ]
    lines += [f"| {l['group']} | {l['matmuls']} | {l['quantized']} | {l['precision']} |" for l in report["layers"]]
    lines += ["", "Left in higher precision: " + (", ".join(s["float_groups"]) or "none"), ""]
    start = f.get("sibling")
    if start:
        verdict = "within budget here too: no search" if start["within_budget"] else \
            "not within budget here: searched from the start"
        missing = f" Groups not in this graph: {', '.join(start['unmatched'])}." if start["unmatched"] else ""
        lines += [f"Started from a sibling graph's decision (left in float there: "
                  f"{', '.join(start['float_groups']) or 'none'}): {start['metric']:.4f}, {verdict}.{missing}", ""]
    if f["trials"]:
        lines += ["## Fallback trials", "", "| left in float | metric | output MSE vs fp32 |", "|---|---|---|"]
        lines += [f"| {', '.join(t['excluded']) or '(none: all int8)'} | {t['metric']:.4f} | {t['mse']:.3g} |"
                  for t in f["trials"]]
    lines += ["", "## Largest activation thresholds", "", "| tensor | threshold | max abs |", "|---|---|---|"]
    lines += [f"| {a['tensor']} | {a['threshold']:.4g} | {a['max_abs']:.4g} |" for a in report["activation_ranges"][:12]]
    return "\n".join(lines) + "\n"
