"""Precision stage, int8: ``model.onnx`` -> ``model.int8.onnx`` with explicit Q/DQ where TensorRT fuses them.

Placement (checked by ``check_placement``; the tests run it on every artifact):

* Q/DQ only on the inputs of MatMul/Gemm nodes that multiply a run-time activation by a
  weight (a MatMul of constants, like the relative-position embeddings times the key/query
  weights, is folded by the builder and stays float):
  the activation gets QuantizeLinear → DequantizeLinear (int8, symmetric, zero point 0,
  per tensor), the weight is stored as int8 with a per-channel DequantizeLinear on its
  output-channel axis (MatMul B [K, N]: axis 1; Gemm with transB: axis 0);
* never on outputs, biases, Softmax, LayerNorm, residual Adds or DisentangledAttention
  nodes: a DequantizeLinear output feeds MatMul/Gemm nodes only (a tensor that also feeds
  a residual Add keeps its float edge to it);
* MatMuls of two activations (q·kᵀ, c2p/p2c scores, probs·v) stay float by default: in
  DeBERTa their outputs feed the disentangled-attention sum and the softmax, whose
  absolute precision matters (an int8 score of magnitude 60 is off by 0.25), and
  TensorRT cannot fuse them into its MHA kernels past the plugin anyway
  (``Int8Options(quantize_bmm=True)`` quantizes them too, both inputs per tensor).

Ranges come from ONNX Runtime's calibrators (MinMax for "max", Percentile, Entropy; "mse"
searches the clipping threshold minimising the expected squared error on the |x|
histogram the Percentile calibrator collects). ONNX Runtime's ``QDQQuantizer`` writes the
Q/DQ (format QDQ, int8 symmetric activations and per-channel symmetric weights, no bias
quantization, no output quantization); a small pass then keeps DequantizeLinear outputs
away from anything but MatMul/Gemm (ORT rewires every consumer of a quantized tensor).

Accuracy-driven fallback (``max_accuracy_loss``, relative): the task metric (accuracy
when the evaluation data has labels, else agreement with the fp32 graph's predictions)
is measured for fp32 and the fully quantized graph; when the loss exceeds the budget,
each group of MatMuls (an encoder layer, or the pooler / classifier / embedding
projections) is left in float alone to measure how much it costs, and groups are
excluded most harmful first until the metric is within budget.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from debertrt.compiler.artifacts import record_stage, sha256, sibling, write_json, write_text
from debertrt.compiler.errors import DebertrtError, InternalError, first_line

from . import graph as G
from .data import BatchReader, calibration_dataset, check_dataset, feeds, vocab_size
from .ranges import collect_ranges

METHODS = ("max", "percentile", "entropy", "mse")
QUANTIZED_OPS = ("MatMul", "Gemm")
Q_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Int8Options:
    method: str = "max"
    max_accuracy_loss: float | None = 0.01   # relative; None: no fallback
    percentile: float = 99.99                # for method="percentile"
    num_bins: int = 2048                     # histogram bins (percentile, mse)
    quantize_bmm: bool = False               # also the activation x activation MatMuls
    granularity: str = "layer"               # fallback unit: "layer" (MatMul group) or "node"
    dedicated_qdq: bool = True               # one Q/DQ pair per consuming MatMul (False: shared)

    def __post_init__(self):
        if self.method not in METHODS:
            raise DebertrtError(f"unknown calibration method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.max_accuracy_loss is not None and not 0 <= self.max_accuracy_loss < 1:
            raise DebertrtError(f"--max-accuracy-loss {self.max_accuracy_loss} must be in [0, 1) (relative)")
        if not 50 < self.percentile <= 100:
            raise DebertrtError(f"percentile {self.percentile} must be in (50, 100]")
        if self.granularity not in ("layer", "node"):
            raise DebertrtError(f"fallback granularity {self.granularity!r}: use 'layer' or 'node'")


def int8_path_for(onnx_path: str | os.PathLike) -> Path:
    """model.onnx -> model.int8.onnx, model.plugin.onnx -> model.plugin.int8.onnx."""
    return sibling(onnx_path, ".int8.onnx")


# ----------------------------------------------------------------------------- the stage


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike | None = None, dataset=None,
                  method: str | None = None, *, ref=None, task: str | None = None, eval_dataset=None,
                  options: Int8Options | None = None) -> Path:
    """Write the int8 Q/DQ graph of ``onnx_path`` (default ``DIR/model.int8.onnx``), its report and manifest entry.

    ``dataset``: calibration batches (default: random batches from ``ref``, or from the
    graph). ``eval_dataset``: what the fallback scores (default: ``ref.eval_dataset``,
    else the calibration batches); ``task`` defaults to ``ref.task``.
    """
    options = options or Int8Options()
    if method is not None and method != options.method:
        options = Int8Options(**{**asdict(options), "method": method})
    src = Path(onnx_path)
    out = Path(out_path) if out_path is not None else int8_path_for(src)
    model = G.load(src)
    _check_fp32_graph(model, src)
    input_names = [i.name for i in model.graph.input]
    vocab = vocab_size(model)
    if dataset is None:
        dataset = calibration_dataset(ref, model=model)
    check_dataset(dataset, input_names, vocab)
    if eval_dataset is None:
        eval_dataset = getattr(ref, "eval_dataset", None) or dataset
    check_dataset(eval_dataset, input_names, vocab, what="evaluation")
    task = task or getattr(ref, "task", None)
    calib_feeds = feeds(dataset, input_names)
    out.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=".debertrt-int8.", dir=out.parent) as tmp:
        tmp = Path(tmp)
        ranges = collect_ranges(model, calib_feeds, workdir=tmp)  # raises on non-finite activations
        prepared, prepared_path = _prepare(model, tmp)
        candidates = quantizable_nodes(prepared, options.quantize_bmm)
        if not candidates:
            raise DebertrtError(f"{src.name} has no MatMul/Gemm with a weight input: nothing to quantize")
        tensors_range = calibrate(prepared_path, calib_feeds, options, tmp)
        groups = group_nodes(prepared, candidates, options.granularity)
        scorer = Scorer(model, eval_dataset, task, tmp)
        build = lambda nodes: build_qdq(prepared, tensors_range, nodes, options.dedicated_qdq)  # noqa: E731
        final, fallback = accuracy_fallback(build, groups, scorer, options.max_accuracy_loss)
        placement = check_placement(final)
        G.save(final, out)

    report = _report(src, out, prepared, dataset, eval_dataset, task, options, ranges, tensors_range, groups, fallback,
                     placement)
    json_path, md_path = G.report_paths(out)
    write_json(json_path, report)
    write_text(md_path, render_markdown(report))
    stage = "int8" if src.name == "model.onnx" else f"int8:{src.name}"
    record_stage(out.parent, stage, inputs={"model": src.name, "sha256": sha256(src)},
                 options={**asdict(options), "calibration": _data_info(dataset),
                          "evaluation": _data_info(eval_dataset)},
                 outputs={"model": out, "report": json_path}, extra={"summary": report["summary"]})
    return out


def _check_fp32_graph(model, src: Path) -> None:
    ops = {n.op_type for n in model.graph.node}
    if set(Q_OPS) & ops:
        raise DebertrtError(f"{src.name} is already quantized (Q/DQ nodes); quantize the fp32 model.onnx")
    if any(i.data_type == 10 for i in model.graph.initializer):
        raise DebertrtError(f"{src.name} holds fp16 weights; quantize the fp32 model.onnx (int8 keeps float "
                            f"parts in fp32)")


def _data_info(dataset) -> dict:
    return {"source": dataset.source, "batches": len(dataset.batches), "examples": len(dataset),
            "labels": dataset.labels is not None}


# ----------------------------------------------------------------------------- graph preparation


def _prepare(model, tmp: Path):
    """A copy with every tensor typed (plugin outputs included), saved for the calibrator."""
    import onnx

    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    G.name_nodes(prepared)
    G.fold_weight_transposes(prepared)
    types = G.value_types(prepared)
    io_names = {i.name for i in prepared.graph.input} | {o.name for o in prepared.graph.output} \
        | {i.name for i in prepared.graph.initializer}
    del prepared.graph.value_info[:]
    for node in prepared.graph.node:
        for out in node.output:
            if out and out in types and out not in io_names:
                prepared.graph.value_info.append(onnx.helper.make_value_info(out, types[out]))
    path = tmp / "prepared.onnx"
    onnx.save_model(prepared, str(path), save_as_external_data=prepared.ByteSize() > G.PROTOBUF_LIMIT // 2,
                    all_tensors_to_one_file=True, location="prepared.onnx.data", size_threshold=1024)
    return prepared, path


def weight_input(node, inits: dict) -> int | None:
    """1 when the MatMul/Gemm's B input is a constant 2-D float weight (None: not a weight layer)."""
    init = inits.get(node.input[1]) if len(node.input) > 1 else None
    if init is not None and init.data_type == 1 and len(init.dims) == 2:
        return 1
    return None


def dynamic_tensors(model) -> set[str]:
    """Tensors that depend on a graph input (the rest is constant: folded by the builders)."""
    found = {i.name for i in model.graph.input}
    for node in model.graph.node:  # graph order is topological
        if any(n in found for n in node.input):
            found.update(o for o in node.output if o)
    return found


def quantizable_nodes(model, quantize_bmm: bool = False) -> list[str]:
    """MatMul/Gemm nodes that multiply a run-time activation by a weight (and, with
    ``quantize_bmm``, two activations). A MatMul of constants — DeBERTa's relative-position
    embeddings through the key/query projections — is left alone: it is folded at build time."""
    inits = G.initializer_map(model.graph)
    dynamic = dynamic_tensors(model)
    names = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS or G.is_plugin_node(node) or node.input[0] not in dynamic:
            continue
        if weight_input(node, inits) is not None:
            names.append(node.name)
        elif quantize_bmm and node.op_type == "MatMul" and all(i in dynamic for i in node.input[:2]):
            names.append(node.name)
    return names


def group_nodes(model, names: list[str], granularity: str = "layer") -> dict[str, list[str]]:
    """Fallback units in graph order: ``layer.N``, or the module (pooler, classifier, ...), or the node."""
    if granularity == "node":
        return {n: [n] for n in names}
    try:
        from debertrt.compiler.patterns import layer_label, node_scopes

        scopes = node_scopes(model)
    except Exception:  # another engineer's module; names alone still work
        scopes, layer_label = {}, None
    nodes = {n.name: n for n in model.graph.node}
    groups: dict[str, list[str]] = {}
    for name in names:
        node = nodes[name]
        label = layer_label(node, scopes) if layer_label else name
        if not label.startswith("layer."):
            scope = scopes.get(name, "")
            parts = [p for p in scope.replace("/", ".").split(".") if p and p not in ("model", "deberta")]
            label = ".".join(parts[:2]) if parts else name
        groups.setdefault(label, []).append(name)
    return groups


# ----------------------------------------------------------------------------- calibration


def calibrate(prepared_path: Path, feed_list: list[dict], options: Int8Options, tmp: Path):
    """``TensorsData`` of the MatMul/Gemm activations with ONNX Runtime's calibrators."""
    from onnxruntime.quantization.calibrate import (EntropyCalibrater, MinMaxCalibrater, PercentileCalibrater,
                                                    TensorData, TensorsData, CalibrationMethod)
    from debertrt.plugins.ort import ort_session

    aug = str(tmp / "augmented.onnx")
    kwargs = dict(op_types_to_calibrate=list(QUANTIZED_OPS), augmented_model_path=aug, symmetric=True,
                  use_external_data_format=os.path.getsize(prepared_path) > G.PROTOBUF_LIMIT // 2)
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


# ----------------------------------------------------------------------------- Q/DQ


def build_qdq(prepared, tensors_range, nodes: list[str], dedicated: bool = False):
    """The Q/DQ model quantizing exactly ``nodes`` (MatMul/Gemm), DQ outputs feeding only those."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    model = onnx.ModelProto()
    model.CopyFrom(prepared)
    if not nodes:
        del model.graph.value_info[:]
        return model
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
             "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS), "DedicatedQDQPair": bool(dedicated)}
    with contextlib.redirect_stdout(io.StringIO()):
        quantizer = QDQQuantizer(model, True, False, QuantType.QInt8, QuantType.QInt8, tensors_range,
                                 list(nodes), [], list(QUANTIZED_OPS), extra)
        model = quantizer.quantize_model()
    _restrict_dq_consumers(model, set(nodes), prepared)
    if dedicated:
        _unshare_qdq_params(model)
    G.toposort(model.graph)
    del model.graph.value_info[:]
    model.producer_name = "debertrt.calibration.int8"
    return model


def _restrict_dq_consumers(model, quantized: set[str], prepared) -> None:
    """ORT feeds a quantized tensor's DQ output to *all* its consumers (a residual Add, a
    MatMul left in float that shares the activation or the weight): give every consumer
    outside ``quantized`` its float tensor back, then drop Q/DQ and int8 weights left unused."""
    from onnxruntime.quantization.quant_utils import add_dequant_output_suffix

    graph = model.graph
    inits = G.initializer_map(graph)
    float_weights = G.initializer_map(prepared.graph)
    weight_of = {add_dequant_output_suffix(name): name for name in float_weights}
    producer = G.producers(graph)
    consumer = G.consumers(graph)
    for node in list(graph.node):
        if node.op_type != "DequantizeLinear":
            continue
        if node.input[0] in inits:
            source = weight_of.get(node.output[0])
        else:
            q = producer.get(node.input[0])
            source = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None
        if source is None:
            continue
        for user in consumer.get(node.output[0], []):
            if user.name in quantized:
                continue
            for k, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[k] = source
            if source in float_weights and source not in inits:
                graph.initializer.append(float_weights[source])
                inits[source] = float_weights[source]
    outputs = {o.name for o in graph.output}
    changed = True
    while changed:
        changed = False
        used = {n for node in graph.node for n in node.input} | outputs
        for node in list(graph.node):
            if node.op_type in Q_OPS and not any(o in used for o in node.output):
                graph.node.remove(node)
                changed = True
    used = {n for node in graph.node for n in node.input} | outputs
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)


def _unshare_qdq_params(model) -> None:
    """Give each activation Q/DQ pair its own scale and zero-point initializers.

    With shared ones, ONNX Runtime's CPU optimizer merges the dedicated QuantizeLinear
    nodes back into one, and a Q feeding several DQ→MatMul groups is then not fused into
    MatMulIntegerToFloat (the MatMul runs in fp32 on dequantized weights). TensorRT reads
    either form; the copies are a few bytes each."""
    graph = model.graph
    inits = G.initializer_map(graph)
    consumer = G.consumers(graph)
    taken = set(inits) | {n for node in graph.node for n in list(node.input) + list(node.output)}
    seen: set[str] = set()
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear":
            continue
        dqs = [u for u in consumer.get(node.output[0], []) if u.op_type == "DequantizeLinear"]
        for k in (1, 2):
            name = node.input[k] if len(node.input) > k else ""
            if not name or name not in inits:
                continue
            if name in seen:
                copy = type(inits[name])()
                copy.CopyFrom(inits[name])
                copy.name = G.unique_name(f"{name}_{node.name}", taken)
                graph.initializer.append(copy)
                node.input[k] = copy.name
                for dq in dqs:
                    if len(dq.input) > k and dq.input[k] == name:
                        dq.input[k] = copy.name
            seen.add(name)


def check_placement(model) -> dict:
    """Raise ``InternalError`` unless every Q/DQ sits on a MatMul/Gemm input (as described in
    the module docstring); return counts."""
    graph = model.graph
    inits = G.initializer_map(graph)
    consumer = G.consumers(graph)
    producer = G.producers(graph)
    q_count = dq_count = weights = 0
    quantized = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            q_count += 1
            users = consumer.get(node.output[0], [])
            if not users or any(u.op_type != "DequantizeLinear" for u in users):
                raise InternalError(f"QuantizeLinear {node.name!r} feeds {[u.op_type for u in users]}, not only DQ")
            src = producer.get(node.input[0])
            if src is not None and (src.op_type in Q_OPS or G.is_plugin_node(src)):
                raise InternalError(f"QuantizeLinear {node.name!r} reads the output of {src.op_type} {src.name!r}")
        elif node.op_type == "DequantizeLinear":
            dq_count += 1
            users = consumer.get(node.output[0], [])
            bad = [u for u in users if u.op_type not in QUANTIZED_OPS]
            if not users or bad:
                raise InternalError(f"DequantizeLinear {node.name!r} feeds {[u.op_type for u in bad] or 'nothing'}")
            if node.input[0] in inits:
                weights += 1
                init = inits[node.input[0]]
                if init.data_type != 3:  # INT8
                    raise InternalError(f"weight {init.name!r} is not int8")
                for user in users:
                    if node.output[0] != user.input[1]:
                        raise InternalError(f"quantized weight {init.name!r} is not the B input of {user.name!r}")
                    axis = _attr(node, "axis", 1)
                    expect = 0 if (user.op_type == "Gemm" and _attr(user, "transB", 0)) else len(init.dims) - 1
                    scales = inits.get(node.input[1])
                    if scales is not None and len(scales.dims) == 1 and scales.dims[0] > 1 and axis != expect:
                        raise InternalError(f"weight {init.name!r} is quantized on axis {axis}, expected the output "
                                            f"channels (axis {expect})")
            else:
                q = producer.get(node.input[0])
                if q is None or q.op_type != "QuantizeLinear":
                    raise InternalError(f"activation DequantizeLinear {node.name!r} is not fed by a QuantizeLinear")
            for user in users:
                quantized.add(user.name)
            zp = inits.get(node.input[2]) if len(node.input) > 2 else None
            if zp is not None:
                from onnx import numpy_helper

                if np.any(numpy_helper.to_array(zp) != 0) or zp.data_type != 3:
                    raise InternalError(f"DequantizeLinear {node.name!r}: zero point must be int8 0 (symmetric)")
    return {"quantize_linear": q_count, "dequantize_linear": dq_count, "quantized_weights": weights,
            "quantized_nodes": sorted(quantized)}


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# ----------------------------------------------------------------------------- fallback


class Scorer:
    """The task metric of a graph on the evaluation data, against the fp32 graph."""

    def __init__(self, fp32_model, dataset, task: str | None, tmp: Path):
        self.dataset = dataset
        self.task = task
        self.tmp = tmp
        self.input_names = [i.name for i in fp32_model.graph.input]
        self.feeds = feeds(dataset, self.input_names)
        self.reference = self._run(fp32_model)
        self.labels = dataset.labels if (dataset.labels is not None and task == "sequence-classification") else None
        self.metric = "accuracy" if self.labels is not None else "agreement"
        self.fp32 = self.score_outputs(self.reference)
        self.calls = 0

    def _run(self, model) -> list[dict]:
        sess = G.session(model, self.tmp)
        names = [o.name for o in sess.get_outputs()]
        outs = []
        for k, feed in enumerate(self.feeds):
            try:
                values = sess.run(names, feed)
            except DebertrtError:
                raise
            except Exception as exc:
                raise DebertrtError(f"evaluation batch {k}: ONNX Runtime failed: {first_line(exc)}") from exc
            outs.append({n: np.asarray(v, np.float32) for n, v in zip(names, values)})
        return outs

    def score_outputs(self, outputs: list[dict]) -> tuple[float, float]:
        """(task metric, mean squared output error vs fp32)."""
        from debertrt.compiler.compare import TaskAgreement, accuracy

        err = float(np.mean([np.mean((o[n] - r[n]) ** 2) for o, r in zip(outputs, self.reference) for n in o]))
        if self.metric == "accuracy":
            return accuracy(self.task, outputs, self.labels)["value"], err
        if self.task is not None:
            agreement = TaskAgreement(self.task)
            for feed, ref, out in zip(self.feeds, self.reference, outputs):
                agreement.update(ref, out, feed["attention_mask"])
            headline = agreement.headline()
            if headline is not None:
                return headline, err
        # unknown task: argmax of the first output over its last axis
        name = next(iter(outputs[0]))
        hits = [np.mean(o[name].argmax(-1) == r[name].argmax(-1)) for o, r in zip(outputs, self.reference)]
        return float(np.mean(hits)), err

    def __call__(self, model) -> tuple[float, float]:
        self.calls += 1
        return self.score_outputs(self._run(model))


def accuracy_fallback(build, groups: dict[str, list[str]], scorer: Scorer, max_loss: float | None):
    """Quantize every group, then leave the most harmful groups in float until the metric is
    within ``max_loss`` (relative) of fp32. Returns (model, record of what was measured)."""
    all_nodes = [n for names in groups.values() for n in names]
    fp32_metric = scorer.fp32[0]
    budget = None if max_loss is None else fp32_metric * (1 - max_loss)
    record = {"metric": scorer.metric, "fp32": fp32_metric, "budget": budget, "max_accuracy_loss": max_loss,
              "groups": {g: len(n) for g, n in groups.items()}, "trials": [], "excluded": []}
    model = build(all_nodes)
    metric, err = scorer(model)
    record["full"] = {"metric": metric, "mse": err}
    record["trials"].append({"excluded": [], "metric": metric, "mse": err})
    if budget is None or metric >= budget:
        record.update(final=metric, final_mse=err, within_budget=budget is None or metric >= budget)
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


# ----------------------------------------------------------------------------- report


def _report(src, out, model, dataset, eval_dataset, task, options, ranges, tensors_range, groups, fallback, placement):
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
               "int8_full": fallback["full"]["metric"], "int8": fallback["final"], "relative_loss": loss,
               "within_budget": fallback["within_budget"], "quantized_matmuls": len(quantized),
               "candidate_matmuls": sum(len(n) for n in groups.values()),
               "float_groups": [l["group"] for l in layers if l["precision"] != "int8"],
               "qdq": {"quantize_linear": placement["quantize_linear"],
                       "dequantize_linear": placement["dequantize_linear"],
                       "quantized_weights": placement["quantized_weights"]}}
    return {"source": src.name, "output": out.name, "task": task, "options": asdict(options),
            "calibration": _data_info(dataset), "evaluation": _data_info(eval_dataset),
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
        f"Calibration: {report['calibration']['source']} ({report['calibration']['examples']} examples), "
        f"method **{s['method']}**; Q/DQ on {s['quantized_matmuls']} of {s['candidate_matmuls']} weight "
        f"MatMul/Gemm inputs ({s['qdq']['quantize_linear']} Q, {s['qdq']['dequantize_linear']} DQ, "
        f"{s['qdq']['quantized_weights']} per-channel int8 weights).",
        "",
        f"Task metric ({s['metric']} on {report['evaluation']['source']}, {report['evaluation']['examples']} "
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
    if f["trials"]:
        lines += ["## Fallback trials", "", "| left in float | metric | output MSE vs fp32 |", "|---|---|---|"]
        lines += [f"| {', '.join(t['excluded']) or '(none: all int8)'} | {t['metric']:.4f} | {t['mse']:.3g} |"
                  for t in f["trials"]]
    lines += ["", "## Largest activation thresholds", "", "| tensor | threshold | max abs |", "|---|---|---|"]
    lines += [f"| {a['tensor']} | {a['threshold']:.4g} | {a['max_abs']:.4g} |" for a in report["activation_ranges"][:12]]
    return "\n".join(lines) + "\n"
