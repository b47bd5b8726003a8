"""Precision stage, fp16: ``model.onnx`` -> ``model.fp16.onnx`` with fp32 islands where fp16 breaks.

TensorRT 11 is strongly typed, so the precision of every tensor lives in the ONNX. This
pass turns the float32 graph into float16 (weights and activations) except for nodes that
must stay float32, chosen by rule *and* by measurement:

* op rules: LayerNormalization, Softmax/LogSoftmax, reductions, Pow/Sqrt/Exp/Log, Range;
  a decomposed layer norm (ReduceMean → Sub → Pow → ReduceMean → Add → Sqrt → Div) as a whole;
* index and mask arithmetic: float tensors computed only from integer inputs and scalars
  (the log-bucket relative positions, the float cast of the attention mask);
* constants outside the fp16 range (masked_fill's ``finfo(float32).min``) and their consumers;
* measured ranges: the fp32 graph runs on calibration batches with every float tensor as
  an output; a tensor whose max |x| exceeds ``threshold`` (default half the fp16 maximum)
  keeps its producer and all its consumers in float32;
* the nodes that produce graph outputs (the head's last MatMul/Gemm): an fp16 logit of
  magnitude 8..16 is rounded to 1/128, more than the fp16 parity budget by itself;
* the attention-score sum feeding each Softmax (c2c + c2p + p2c, its scale, the mask):
  exp() turns absolute error into relative error, and fp16 rounds a score of 16..32 by up
  to 0.008; measured on the trained preset this island halves the logit error (the score
  MatMuls themselves stay fp16; their outputs are cast up exactly);
* DisentangledAttention nodes sit in that score sum, so by default they run with fp32 I/O
  (Casts around them). With ``softmax_inputs_fp32=False`` they run with fp16 I/O
  (``plugin_fp16``), which the CUDA kernel supports with fp32 accumulation and ONNX
  Runtime's reference op emulates with Casts around itself.

Casts are inserted only on edges between the two regions (one per tensor and direction);
a float Cast of integer data that only fp16 nodes read is retargeted to fp16 instead.
Graph inputs and outputs keep their types (outputs are cast back to float32 at the end),
so runners and parity need no change. A report (``model.fp16.json`` / ``.md``) lists what
stayed float32 and why.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from debertrt.compiler.artifacts import record_stage, sha256, sibling, write_json, write_text
from debertrt.compiler.errors import DebertrtError

from . import graph as G
from .data import calibration_dataset, check_dataset, feeds, vocab_size
from .ranges import TensorRanges, collect_ranges

FP16_MAX = 65504.0
DEFAULT_THRESHOLD = 0.5 * FP16_MAX
FLOAT, FLOAT16 = 1, 10

KEEP_FP32_OPS = {
    "LayerNormalization": "layer norm: statistics in fp32",
    "SkipLayerNormalization": "layer norm: statistics in fp32",
    "SimplifiedLayerNormalization": "layer norm: statistics in fp32",
    "Softmax": "softmax in fp32",
    "LogSoftmax": "softmax in fp32",
    "ReduceMean": "reduction in fp32",
    "ReduceSum": "reduction in fp32",
    "ReduceSumSquare": "reduction in fp32",
    "ReduceL2": "reduction in fp32",
    "ReduceLogSumExp": "reduction in fp32",
    "Pow": "power in fp32",
    "Sqrt": "square root in fp32",
    "Reciprocal": "reciprocal in fp32",
    "Exp": "exp in fp32",
    "Log": "log in fp32",
    "Range": "index arithmetic",
}


@dataclass(frozen=True)
class Fp16Options:
    threshold: float = DEFAULT_THRESHOLD   # max |x| above which a tensor stays fp32
    softmax_inputs_fp32: bool = True       # the attention-score sum (and a plugin node in it) in fp32
    plugin_fp16: bool = True               # DisentangledAttention with fp16 I/O when not in the score chain
    fp32_outputs: bool = True              # nodes producing graph outputs (the task head's last op) in fp32
    keep_ops: tuple[str, ...] = tuple(KEEP_FP32_OPS)
    check_batches: int = 2                 # batches on which fp16 is compared with fp32 after the pass

    def __post_init__(self):
        if not 0 < self.threshold <= FP16_MAX:
            raise DebertrtError(f"fp16 threshold {self.threshold} must be in (0, {FP16_MAX:g}]")


def fp16_path_for(onnx_path: str | os.PathLike) -> Path:
    """model.onnx -> model.fp16.onnx, model.plugin.onnx -> model.plugin.fp16.onnx."""
    return sibling(onnx_path, ".fp16.onnx")


def to_fp16(onnx_path: str | os.PathLike, out_path: str | os.PathLike | None = None, dataset=None, *,
            ref=None, options: Fp16Options = Fp16Options()) -> Path:
    """Write the fp16 graph of ``onnx_path`` (default ``DIR/model.fp16.onnx``), its report and manifest entry.

    ``dataset``: calibration batches (``compiler.inputs.Dataset``); default: random batches
    from ``ref`` (or from the graph when ``ref`` is None).
    """
    src = Path(onnx_path)
    out = Path(out_path) if out_path is not None else fp16_path_for(src)
    model = G.load(src)
    _check_fp32_graph(model, src)
    if dataset is None:
        dataset = calibration_dataset(ref, model=model)
    input_names = [i.name for i in model.graph.input]
    check_dataset(dataset, input_names, vocab_size(model))
    feed_list = feeds(dataset, input_names)
    ranges = collect_ranges(model, feed_list, workdir=out.parent if out.parent.exists() else None)

    converted, decision = convert(model, ranges, options)
    check = _compare(model, converted, feed_list[: options.check_batches], out.parent)
    G.save(converted, out)

    report = _report(src, out, dataset, ranges, decision, options, check)
    json_path, md_path = G.report_paths(out)
    write_json(json_path, report)
    write_text(md_path, render_markdown(report))
    stage = "fp16" if src.name == "model.onnx" else f"fp16:{src.name}"
    record_stage(out.parent, stage, inputs={"model": src.name, "sha256": sha256(src)},
                 options={**asdict(options), "calibration": _data_info(dataset)},
                 outputs={"model": out, "report": json_path},
                 extra={"summary": report["summary"]})
    return out


def _check_fp32_graph(model, src: Path) -> None:
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        raise DebertrtError(f"{src.name} is quantized (Q/DQ nodes); convert the fp32 model.onnx instead")
    if any(i.data_type == FLOAT16 for i in model.graph.initializer):
        raise DebertrtError(f"{src.name} already holds fp16 weights; convert the fp32 model.onnx instead")


# ----------------------------------------------------------------------------- decision


@dataclass
class Decision:
    fp32: dict[str, tuple[str, str]]        # node name -> (kind, detail)
    fp16: list[str]
    untouched: int                          # nodes without float tensors
    casts_inserted: int = 0
    casts_retargeted: int = 0


def _constants_to_initializers(model) -> None:
    """Float ``Constant`` nodes become initializers, so one rule covers every constant."""
    from onnx import numpy_helper

    keep = []
    for node in model.graph.node:
        value = None
        if node.op_type == "Constant" and len(node.attribute) == 1:
            attr = node.attribute[0]
            if attr.name == "value" and attr.t.data_type == FLOAT:
                value = numpy_helper.to_array(attr.t)
            elif attr.name == "value_float":
                value = np.array(attr.f, dtype=np.float32)
            elif attr.name == "value_floats":
                value = np.array(list(attr.floats), dtype=np.float32)
        if value is None:
            keep.append(node)
        else:
            model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _layer_norm_chains(model) -> set[str]:
    """Nodes of decomposed layer norms::

        x ─► ReduceMean ─► Sub(x, mean) ─► Pow(2) ─► ReduceMean ─► Add(eps) ─► Sqrt ─► Div(Sub, ·)

    found from each Sqrt: its ReduceMean/Pow/Sub/Add ancestors (4 hops) and its Div consumers.
    """
    producer, consumer = G.producers(model.graph), G.consumers(model.graph)
    chain_ops = {"ReduceMean", "Pow", "Sub", "Add", "Mul", "Sqrt"}
    found = set()
    for node in model.graph.node:
        if node.op_type != "Sqrt":
            continue
        ups, frontier = [], [(node, 0)]
        while frontier:
            cur, depth = frontier.pop()
            if depth >= 4:
                continue
            for name in cur.input:
                up = producer.get(name)
                if up is not None and up.op_type in chain_ops:
                    ups.append(up)
                    frontier.append((up, depth + 1))
        if not any(u.op_type == "ReduceMean" for u in ups):
            continue
        found.add(node.name)
        found.update(u.name for u in ups)
        for down in consumer.get(node.output[0], []):
            if down.op_type in ("Div", "Reciprocal"):
                found.add(down.name)
    return found


SCORE_CHAIN_OPS = {"Where", "Reshape", "Transpose", "Add", "Sub", "Mul", "Div", "GatherElements", "Gather",
                   "Squeeze", "Unsqueeze", "Expand", "Identity", "Cast", "Neg", "Clip"}


def _softmax_input_chains(model) -> set[str]:
    """Nodes between the score MatMuls and each Softmax (the MatMuls themselves excluded)::

        q·kᵀ ─┐                                                  MatMul (stays fp16)
        q·pos_kᵀ ─ GatherElements ─ Div ─┐                       │
        k·pos_qᵀ ─ GatherElements ─ Transpose ─ Div ─ Add ─ Add ─ Reshape ─ Where(mask) ─ Softmax
                                                  └─ or one DisentangledAttention node ─┘

    exp() turns an absolute error of the softmax input into a relative error of the
    probabilities; fp16 keeps 11 bits, so a score of magnitude 16..32 is off by up to
    0.008. The sum of the score terms therefore stays in fp32 (the MatMuls producing the
    terms stay fp16 and are cast up exactly).
    """
    producer = G.producers(model.graph)
    found = set()
    for node in model.graph.node:
        if node.op_type != "Softmax":
            continue
        stack = [node.input[0]]
        while stack:
            up = producer.get(stack.pop())
            if up is None or up.name in found:
                continue
            if up.op_type not in SCORE_CHAIN_OPS and not G.is_plugin_node(up):
                continue
            found.add(up.name)
            stack.extend(n for n in up.input if n)
    return found


def _index_tensors(model, types: dict[str, int], inits: dict) -> set[str]:
    """Float tensors computed without any weight: only from integers and scalar constants."""
    data = set()
    for name, init in inits.items():
        if init.data_type == FLOAT and int(np.prod(init.dims)) > 1:
            data.add(name)
    index = set()
    for node in model.graph.node:
        float_in = [n for n in node.input if n and types.get(n) in G.FLOAT_TYPES]
        is_data = any(n in data for n in float_in) or (
            node.op_type == "Gather" and node.input and node.input[0] in data)
        for out in node.output:
            if types.get(out) not in G.FLOAT_TYPES:
                continue
            if is_data or G.is_plugin_node(node):
                data.add(out)
            else:
                index.add(out)
    return index


def decide(model, ranges: TensorRanges, options: Fp16Options, types: dict[str, int]) -> Decision:
    """Which nodes stay float32, and why."""
    inits = G.initializer_map(model.graph)
    consumer = G.consumers(model.graph)
    producer = G.producers(model.graph)
    fp32: dict[str, tuple[str, str]] = {}

    def keep(node, kind, detail):
        fp32.setdefault(node.name, (kind, detail))

    def has_float(node):
        return any(n and types.get(n) in G.FLOAT_TYPES for n in list(node.input) + list(node.output))

    keep_ops = set(options.keep_ops)
    chains = _layer_norm_chains(model)
    scores = _softmax_input_chains(model) if options.softmax_inputs_fp32 else set()
    index = _index_tensors(model, types, inits)
    big_consts = {name for name, init in inits.items() if init.data_type == FLOAT
                  and _init_amax(init) > FP16_MAX}
    for node in model.graph.node:
        if not has_float(node):
            continue
        if G.is_plugin_node(node) and not options.plugin_fp16:
            keep(node, "plugin", "DisentangledAttention kept in fp32 (plugin_fp16=False)")
        if node.op_type in keep_ops:
            keep(node, "op", KEEP_FP32_OPS.get(node.op_type, f"{node.op_type} kept in fp32"))
        if node.name in chains:
            keep(node, "layernorm-chain", "decomposed layer norm: statistics in fp32")
        if node.name in scores:
            keep(node, "softmax-input", "attention-score sum feeding a softmax (absolute precision matters)")
        float_outs = [o for o in node.output if types.get(o) in G.FLOAT_TYPES]
        if float_outs and all(o in index for o in float_outs) and not G.is_plugin_node(node):
            keep(node, "index-arithmetic", "position / mask arithmetic (no weights upstream)")
        for name in node.input:
            if name in big_consts:
                keep(node, "constant-range", f"constant {name!r} exceeds the fp16 range (|x| = "
                                             f"{_init_amax(inits[name]):.3g})")
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if options.fp32_outputs and any(o in outputs for o in node.output) and has_float(node):
            keep(node, "output", "produces a graph output: the last op runs in fp32 (an fp16 result "
                                 "would be rounded to 11 bits)")
    for name, amax in ranges.amax.items():
        if amax > options.threshold:
            detail = f"|{name}| reaches {amax:.4g} > {options.threshold:g} on calibration data"
            if name in producer:
                keep(producer[name], "measured-range", detail)
            for node in consumer.get(name, []):
                keep(node, "measured-range", detail)
    fp16 = [n.name for n in model.graph.node if has_float(n) and n.name not in fp32]
    untouched = sum(1 for n in model.graph.node if not has_float(n))
    return Decision(fp32, fp16, untouched)


def _init_amax(init) -> float:
    from onnx import numpy_helper

    arr = numpy_helper.to_array(init)
    return float(np.abs(arr).max()) if arr.size else 0.0


# ----------------------------------------------------------------------------- rewrite


def convert(model, ranges: TensorRanges, options: Fp16Options = Fp16Options()):
    """The fp16 ``ModelProto`` of ``model`` (not modified) and the decision behind it."""
    import onnx
    from onnx import helper, numpy_helper

    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    model = model_copy
    G.name_nodes(model)
    _constants_to_initializers(model)
    types = G.elem_types(model)
    decision = decide(model, ranges, options, types)
    graph = model.graph
    fp32_nodes = set(decision.fp32)
    fp16_nodes = set(decision.fp16)
    consumer = G.consumers(graph)
    graph_outputs = {o.name for o in graph.output}

    # a float Cast of index data that only fp16 nodes read becomes a Cast to fp16 (no extra Cast)
    for node in graph.node:
        if (node.op_type == "Cast" and node.name in fp32_nodes and decision.fp32[node.name][0] == "index-arithmetic"
                and _attr(node, "to") == FLOAT and node.output[0] not in graph_outputs
                and ranges.get(node.output[0]) <= options.threshold
                and all(c.name in fp16_nodes for c in consumer.get(node.output[0], []))):
            fp32_nodes.discard(node.name)
            fp16_nodes.add(node.name)
            del decision.fp32[node.name]
            decision.fp16.append(node.name)
            decision.casts_retargeted += 1

    inits = G.initializer_map(graph)
    taken = {n for node in graph.node for n in list(node.input) + list(node.output)} | set(inits) \
        | {i.name for i in graph.input} | {n.name for n in graph.node}
    half: dict[str, str] = {}     # fp32 initializer -> its fp16 twin
    casts: dict[tuple[str, int], str] = {}
    produced16: set[str] = set()  # tensors that are fp16 after the rewrite
    new_inits = []

    def init_fp16(name):
        if name not in half:
            init = inits[name]
            users = consumer.get(name, [])
            arr = numpy_helper.to_array(init).astype(np.float16)
            if all(u.name in fp16_nodes for u in users) and name not in graph_outputs:
                target = name
                graph.initializer.remove(init)
            else:
                target = G.unique_name(name + "_fp16", taken)
            new_inits.append(numpy_helper.from_array(arr, target))
            half[name] = target
        return half[name]

    def cast(name, to, out_nodes):
        key = (name, to)
        if key not in casts:
            suffix = "_fp16" if to == FLOAT16 else "_fp32"
            casts[key] = G.unique_name(name + suffix, taken)
            out_nodes.append(helper.make_node("Cast", [name], [casts[key]], name=G.unique_name(
                f"Cast{suffix}/{name}", taken), to=to))
            decision.casts_inserted += 1
        return casts[key]

    # graph outputs produced in fp16 get their fp16 tensor renamed and a final Cast to fp32
    rename: dict[str, str] = {}
    for node in graph.node:
        if node.name in fp16_nodes:
            for k, out in enumerate(node.output):
                if out in graph_outputs and types.get(out) == FLOAT:
                    rename[out] = G.unique_name(out + "_fp16", taken)
                    types[rename[out]] = types[out]
                    node.output[k] = rename[out]

    new_nodes = []
    for node in graph.node:
        for k, name in enumerate(node.input):
            name = rename.get(name, name)
            node.input[k] = name
            if not name or types.get(name) != FLOAT:
                continue
            if node.name in fp16_nodes:
                if name in inits:
                    node.input[k] = init_fp16(name)
                elif name not in produced16:
                    node.input[k] = cast(name, FLOAT16, new_nodes)
            elif name in produced16:
                node.input[k] = cast(name, FLOAT, new_nodes)
        if node.name in fp16_nodes:
            if node.op_type == "Cast" and _attr(node, "to") == FLOAT:
                _set_attr(node, "to", FLOAT16)
            produced16.update(out for out in node.output if types.get(out) == FLOAT)
        new_nodes.append(node)
    for original, renamed in rename.items():
        new_nodes.append(helper.make_node("Cast", [renamed], [original], name=G.unique_name(
            f"Cast_fp32/{original}", taken), to=FLOAT))
        decision.casts_inserted += 1
    graph.initializer.extend(new_inits)
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    model.producer_name = "debertrt.calibration.fp16"
    return model, decision


def _attr(node, name):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _set_attr(node, name, value):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            node.attribute.remove(a)
            break
    node.attribute.append(helper.make_attribute(name, value))


# ----------------------------------------------------------------------------- check + report


def _compare(fp32_model, fp16_model, feed_list, workdir: Path) -> dict:
    """Max |fp16 - fp32| per output on a few calibration batches; non-finite fp16 output raises."""
    import tempfile

    workdir.mkdir(parents=True, exist_ok=True)
    result = {}
    with tempfile.TemporaryDirectory(prefix="debertrt-fp16.", dir=workdir) as tmp:
        s32, s16 = G.session(fp32_model, tmp), G.session(fp16_model, tmp)
        names = [o.name for o in s32.get_outputs()]
        for k, feed in enumerate(feed_list):
            a, b = s32.run(names, feed), s16.run(names, feed)
            for name, x, y in zip(names, a, b):
                y = np.asarray(y, dtype=np.float32)
                if not np.isfinite(y).all():
                    raise DebertrtError(f"the fp16 graph produces inf/NaN in {name!r} on calibration batch {k}; "
                                        f"lower the fp16 threshold to keep more of the graph in fp32")
                err = float(np.abs(np.asarray(x, np.float32) - y).max()) if x.size else 0.0
                result[name] = max(result.get(name, 0.0), err)
    return {"batches": len(feed_list), "max_abs_vs_fp32_graph": result}


def _data_info(dataset) -> dict:
    return {"source": dataset.source, "batches": len(dataset.batches), "examples": len(dataset)}


def _report(src: Path, out: Path, dataset, ranges: TensorRanges, decision: Decision, options: Fp16Options,
            check: dict) -> dict:
    model = G.load(src)
    nodes = {n.name: n for n in model.graph.node}
    try:
        from debertrt.compiler.patterns import layer_label, node_scopes

        scopes = node_scopes(model)
        label = lambda n: layer_label(n, scopes)  # noqa: E731
    except Exception:  # the patterns module is optional here: fall back to node names
        label = lambda n: n.name  # noqa: E731
    kept = []
    for name, (kind, detail) in decision.fp32.items():
        node = nodes.get(name)
        kept.append({"node": name, "op": node.op_type if node is not None else "?", "kind": kind, "reason": detail,
                     "where": label(node) if node is not None else name})
    producer = G.producers(model.graph)
    top = sorted(ranges.amax.items(), key=lambda kv: -kv[1])[:12]
    largest = [{"tensor": t, "max_abs": v, "op": producer[t].op_type if t in producer else "?",
                "fp32": (producer[t].name in decision.fp32) if t in producer else None} for t, v in top]
    summary = {"nodes_fp16": len(decision.fp16), "nodes_fp32": len(decision.fp32),
               "nodes_without_float": decision.untouched, "casts_inserted": decision.casts_inserted,
               "casts_retargeted": decision.casts_retargeted,
               "fp32_by_kind": dict(Counter(k["kind"] for k in kept)),
               "fp32_by_op": dict(Counter(k["op"] for k in kept))}
    return {"source": src.name, "output": out.name, "threshold": options.threshold,
            "plugin_fp16": options.plugin_fp16, "calibration": {**_data_info(dataset), "batches_run": ranges.batches},
            "summary": summary, "check": check, "fp32_nodes": kept, "largest_activations": largest}


def render_markdown(report: dict) -> str:
    s = report["summary"]
    lines = [
        f"# fp16 conversion: {report['source']} → {report['output']}",
        "",
        f"{s['nodes_fp16']} nodes in fp16, {s['nodes_fp32']} kept in fp32, {s['nodes_without_float']} without float "
        f"tensors; {s['casts_inserted']} Casts inserted at island borders, {s['casts_retargeted']} float Casts of "
        f"integer data retargeted to fp16.",
        "",
        f"Calibration: {report['calibration']['source']} ({report['calibration']['examples']} examples, "
        f"{report['calibration']['batches_run']} batches); range threshold {report['threshold']:g}. "
        f"DisentangledAttention I/O: {'fp16' if report['plugin_fp16'] else 'fp32'}.",
        "",
        "Check on calibration batches, max |fp16 graph − fp32 graph|: " + ", ".join(
            f"{k} {v:.3g}" for k, v in report["check"]["max_abs_vs_fp32_graph"].items()),
        "",
        "## Kept in fp32, by reason",
        "",
        "| reason | nodes |",
        "|---|---|",
    ]
    lines += [f"| {kind} | {count} |" for kind, count in sorted(s["fp32_by_kind"].items())]
    lines += ["", "| node | op | where | reason |", "|---|---|---|---|"]
    lines += [f"| {k['node']} | {k['op']} | {k['where']} | {k['reason']} |" for k in report["fp32_nodes"]]
    lines += ["", "## Largest activations (fp32 graph, calibration data)", "",
              "| tensor | producer | max abs | kept fp32 |", "|---|---|---|---|"]
    lines += [f"| {a['tensor']} | {a['op']} | {a['max_abs']:.4g} | {'yes' if a['fp32'] else 'no'} |"
              for a in report["largest_activations"]]
    return "\n".join(lines) + "\n"
