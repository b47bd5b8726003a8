"""Precision stage, fp16: ``model.onnx`` -> ``model.fp16.onnx`` with fp32 islands where fp16 breaks.

TensorRT 11 is strongly typed, so the precision of every tensor lives in the ONNX. This
pass turns the float32 graph into float16 (weights and activations) except for nodes that
must stay float32, chosen by rule *and* by measurement (``calibration.fp16_rules``).

Casts are inserted only on edges between the two regions (one per tensor and direction);
a float Cast of integer data that only fp16 nodes read is retargeted to fp16 instead.
Graph inputs and outputs keep their types (outputs are cast back to float32 at the end),
so runners and parity need no change. A report (``model.fp16.json`` / ``.md``) lists what
stayed float32 and why.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
from onnx import TensorProto

from debertrt.core.artifacts import StageResult, record_stage, sha256, sibling, write_json, write_text
from debertrt.core.errors import DebertrtError

from debertrt.core import onnx_utils as ox
from debertrt.core.resources import measured, release_memory
from debertrt.plugins.graph_types import elem_types

from . import graph as G
from .data import default_dataset, check_dataset, feeds, vocab_size
from .options import FP16_MAX, Fp16Options
from .fp16_rules import Decision, decide
from .ranges import TensorRanges, collect_ranges

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16

def fp16_path_for(onnx_path: str | os.PathLike) -> Path:
    """model.onnx -> model.fp16.onnx, model.plugin.onnx -> model.plugin.fp16.onnx."""
    return sibling(onnx_path, ".fp16.onnx")


@measured
def to_fp16(onnx_path: str | os.PathLike, out_path: str | os.PathLike | None = None, dataset=None, *,
            ref=None, options: Fp16Options = Fp16Options()) -> StageResult:
    """Write the fp16 graph of ``onnx_path`` (default ``DIR/model.fp16.onnx``), its report and manifest entry.

    ``dataset``: calibration batches (``compiler.inputs.Dataset``); default: random batches
    from ``ref`` (or from the graph when ``ref`` is None).
    """
    src = Path(onnx_path)
    out = Path(out_path) if out_path is not None else fp16_path_for(src)
    model = ox.load(src)
    ox.require_fp32(model, src.name, "fp16")
    if dataset is None:
        dataset = default_dataset("calibration", ref, model)
    input_names = [i.name for i in model.graph.input]
    check_dataset(dataset, input_names, vocab_size(model))
    feed_list = feeds(dataset, input_names)
    check_feeds = feed_list[: options.check_batches]
    expected: list[dict] = []  # the fp32 graph's outputs on the check batches, from the range run itself

    def keep_check_outputs(k: int, outputs: dict) -> None:
        if k < len(check_feeds):
            expected.append(outputs)

    ranges = collect_ranges(model, feed_list, workdir=out.parent if out.parent.exists() else None,
                            on_outputs=keep_check_outputs)
    release_memory()  # each session's pages go back to the system before the next one loads

    converted, decision = convert(model, ranges, options)
    del model  # from here on one graph's weights at a time: the fp16 ones
    release_memory()
    check = _compare(converted, expected, check_feeds, out.parent)
    only = [converted]
    del converted
    ox.save(only.pop(), out, check="full")  # the only reference: freed before the written file is checked

    report = _report(src, out, dataset, ranges, decision, options, check)
    json_path, md_path = G.report_paths(out)
    write_json(json_path, report)
    write_text(md_path, render_markdown(report))
    stage = "fp16" if src.name == "model.onnx" else f"fp16:{src.name}"
    record_stage(out.parent, stage, inputs={"model": src.name, "sha256": sha256(src)},
                 options={**asdict(options), "calibration": dataset.describe()},
                 outputs={"model": out, "report": json_path},
                 extra={"summary": report["summary"]})
    return StageResult(out, json_path, report["summary"])


# ----------------------------------------------------------------------------- rewrite


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


def convert(model, ranges: TensorRanges, options: Fp16Options = Fp16Options()):
    """The fp16 ``ModelProto`` of ``model`` (not modified) and the decision behind it."""
    from onnx import helper, numpy_helper

    weights = model
    model = ox.with_weight_stubs(model)  # the weights are read from the original, the fp32 ones kept copied last
    ox.name_nodes(model)
    _constants_to_initializers(model)
    types = elem_types(model)
    decision = decide(model, ranges, options, types, weights)
    graph = model.graph
    fp32_nodes = set(decision.fp32)
    fp16_nodes = set(decision.fp16)
    consumer = ox.consumers(graph)
    graph_outputs = {o.name for o in graph.output}

    # a float Cast of index data that only fp16 nodes read becomes a Cast to fp16 (no extra Cast)
    for node in graph.node:
        if (node.op_type == "Cast" and node.name in fp32_nodes and decision.fp32[node.name][0] == "index-arithmetic"
                and ox.attr(node, "to") == FLOAT and node.output[0] not in graph_outputs
                and ranges.get(node.output[0]) <= options.threshold
                and all(c.name in fp16_nodes for c in consumer.get(node.output[0], []))):
            fp32_nodes.discard(node.name)
            fp16_nodes.add(node.name)
            del decision.fp32[node.name]
            decision.fp16.append(node.name)
            decision.casts_retargeted += 1

    inits = ox.initializer_map(graph)
    taken = {n for node in graph.node for n in list(node.input) + list(node.output)} | set(inits) \
        | {i.name for i in graph.input} | {n.name for n in graph.node}
    half: dict[str, str] = {}     # fp32 initializer -> its fp16 twin
    casts: dict[tuple[str, int], str] = {}
    produced16: set[str] = set()  # tensors that are fp16 after the rewrite
    originals = ox.initializer_map(weights.graph)

    def init_fp16(name):
        if name not in half:
            init = inits[name]
            users = consumer.get(name, [])
            arr = numpy_helper.to_array(originals.get(name, init)).astype(np.float16)
            if all(u.name in fp16_nodes for u in users) and name not in graph_outputs:
                target = name
                graph.initializer.remove(init)
            else:
                target = ox.unique_name(name + "_fp16", taken)
            graph.initializer.append(numpy_helper.from_array(arr, target))  # after the originals, as created
            half[name] = target
        return half[name]

    def cast(name, to, out_nodes):
        key = (name, to)
        if key not in casts:
            suffix = "_fp16" if to == FLOAT16 else "_fp32"
            casts[key] = ox.unique_name(name + suffix, taken)
            out_nodes.append(helper.make_node("Cast", [name], [casts[key]], name=ox.unique_name(
                f"Cast{suffix}/{name}", taken), to=to))
            decision.casts_inserted += 1
        return casts[key]

    # graph outputs produced in fp16 get their fp16 tensor renamed and a final Cast to fp32
    rename: dict[str, str] = {}
    for node in graph.node:
        if node.name in fp16_nodes:
            for k, out in enumerate(node.output):
                if out in graph_outputs and types.get(out) == FLOAT:
                    rename[out] = ox.unique_name(out + "_fp16", taken)
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
            if node.op_type == "Cast" and ox.attr(node, "to") == FLOAT:
                ox.set_attr(node, "to", FLOAT16)
            produced16.update(out for out in node.output if types.get(out) == FLOAT)
        new_nodes.append(node)
    for original, renamed in rename.items():
        new_nodes.append(helper.make_node("Cast", [renamed], [original], name=ox.unique_name(
            f"Cast_fp32/{original}", taken), to=FLOAT))
        decision.casts_inserted += 1
    ox.fill_stubs(model, weights)  # the fp32 weights still read
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    model.producer_name = "debertrt.calibration.fp16"
    return model, decision


# ----------------------------------------------------------------------------- check + report


def _compare(fp16_model, expected: list[dict], feed_list, workdir: Path) -> dict:
    """Max |fp16 - fp32| per output on a few calibration batches (``expected``: the fp32 graph's outputs),
    and the largest |x| any fp16 tensor holds there; a non-finite fp16 tensor raises. Every fp16 tensor is
    materialised in fp16 for this: ONNX Runtime on the CPU otherwise runs fp16 chains in fp32 and hides an
    overflow that a GPU would show. One run gives both (the outputs come from the same session)."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = {}
    types = elem_types(fp16_model)
    halves = [o for node in fp16_model.graph.node for o in node.output if types.get(o) == FLOAT16]

    def compare(k: int, outputs: dict) -> None:
        for name, x in expected[k].items():
            y = np.asarray(outputs[name], dtype=np.float32)
            if not np.isfinite(y).all():
                raise DebertrtError(f"the fp16 graph produces inf/NaN in {name!r} on calibration batch {k}; "
                                    f"lower the fp16 threshold to keep more of the graph in fp32")
            err = float(np.abs(np.asarray(x, np.float32) - y).max()) if x.size else 0.0
            result[name] = max(result.get(name, 0.0), err)

    largest = collect_ranges(fp16_model, feed_list, halves, workdir, graph="fp16", on_outputs=compare,
                             advice="fp16 overflows there: lower --fp16-threshold to keep more of the graph in fp32")
    return {"batches": len(feed_list), "max_abs_vs_fp32_graph": result,
            "fp16_max_abs": max(largest.amax.values(), default=0.0)}


def _report(src: Path, out: Path, dataset, ranges: TensorRanges, decision: Decision, options: Fp16Options,
            check: dict) -> dict:
    model = ox.load(src, external_data=False)  # names and scopes only
    nodes = {n.name: n for n in model.graph.node}
    scopes = ox.node_scopes(model)
    kept = []
    for name, (kind, detail) in decision.fp32.items():
        node = nodes.get(name)
        kept.append({"node": name, "op": node.op_type if node is not None else "?", "kind": kind, "reason": detail,
                     "where": ox.layer_label(node, scopes) if node is not None else name})
    producer = ox.producers(model.graph)
    above = {}  # where activations left the fp16 range: the measured islands, by layer
    for k in kept:
        if k["kind"] == "measured-range" and k["node"] in nodes:
            island = above.setdefault(k["where"], {"where": k["where"], "nodes": [], "max_abs": 0.0})
            island["nodes"].append(k["node"])
            island["max_abs"] = max([island["max_abs"]] + [ranges.get(o) for o in nodes[k["node"]].output])
    top = sorted(ranges.amax.items(), key=lambda kv: -kv[1])[:12]
    largest = [{"tensor": t, "max_abs": v, "op": producer[t].op_type if t in producer else "?",
                "fp32": (producer[t].name in decision.fp32) if t in producer else None} for t, v in top]
    summary = {"nodes_fp16": len(decision.fp16), "nodes_fp32": len(decision.fp32),
               "nodes_without_float": decision.untouched, "casts_inserted": decision.casts_inserted,
               "casts_retargeted": decision.casts_retargeted,
               "fp32_by_kind": dict(Counter(k["kind"] for k in kept)),
               "fp32_by_op": dict(Counter(k["op"] for k in kept)),
               "above_range": [{"where": i["where"], "nodes": len(i["nodes"]), "max_abs": i["max_abs"]}
                               for i in above.values()]}
    return {"source": src.name, "output": out.name, "threshold": options.threshold,
            "plugin_fp16": options.plugin_fp16, "calibration": {**dataset.describe(), "batches_run": ranges.batches},
            "summary": summary, "check": check, "fp32_nodes": kept, "largest_activations": largest,
            "above_range": list(above.values())}


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
            f"{k} {v:.3g}" for k, v in report["check"]["max_abs_vs_fp32_graph"].items())
        + f"; largest |x| held in an fp16 tensor: {report['check']['fp16_max_abs']:.4g} (fp16 max {FP16_MAX:g}).",
        "",
        "## Activations beyond the range threshold (fp32 islands by measurement)",
        "",
        *(["| where | nodes kept fp32 | largest abs |", "|---|---|---|"]
          + [f"| {i['where']} | {len(i['nodes'])} | {i['max_abs']:.4g} |" for i in report["above_range"]]
          if report["above_range"] else ["none on the calibration data"]),
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
