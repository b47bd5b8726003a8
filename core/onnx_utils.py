"""ONNX graphs: attributes, edges, topological order, scopes, precision, and running sessions over
batches; and, re-exported for its callers, the file functions of ``core.onnx_files`` (``ox.load``,
``ox.save``, weight stubs).

Plugin-aware type inference lives with the plugins (``debertrt.plugins.graph_types``): this
module knows no op of ours.
"""

from __future__ import annotations

import ast
import heapq
import os
import re
from collections import defaultdict
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import DebertrtError, InternalError, first_line
from .onnx_files import (FLOAT_TYPES, PROTOBUF_LIMIT, fill_stubs, initializers_with, is_large_weight,  # noqa: F401
                         load, needs_external_data, save, skeleton, staged_save, uses_external_data, weight_bytes,
                         weight_stub, with_weight_stubs, without_initializers, write_model, write_with_weights)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def attr(node, name: str, default=None):
    """The value of attribute ``name`` of a ``NodeProto`` (strings decoded), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def set_attr(node, name: str, value) -> None:
    for a in node.attribute:
        if a.name == name:
            node.attribute.remove(a)
            break
    node.attribute.append(helper.make_attribute(name, value))


def all_nodes(graph) -> Iterator:
    """Every node, those of subgraphs (If / Loop / Scan) included."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(a.g)
            for sub in a.graphs:
                yield from all_nodes(sub)


def consumers(graph) -> dict[str, list]:
    found = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                found[name].append(node)
    return found


def producers(graph) -> dict[str, object]:
    return {out: node for node in graph.node for out in node.output if out}


def initializer_map(graph) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in graph.initializer}


def constant_values(graph) -> dict[str, np.ndarray]:
    """Values of initializers and Constant-node outputs."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
    return values


def unique_name(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (decisions and quantizer options are keyed by it)."""
    taken: set[str] = set()
    for k, node in enumerate(model.graph.node):
        if not node.name or node.name in taken:
            node.name = unique_name(node.name or f"{node.op_type}_{k}", taken)
        taken.add(node.name)


def toposort(graph) -> None:
    """Order ``graph.node`` topologically (stable: ties keep their current order)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    waiting, missing, ready = defaultdict(list), [], []
    for k, node in enumerate(nodes):
        need = {n for n in node.input if n not in available}
        missing.append(len(need))
        for n in need:
            waiting[n].append(k)
        if not need:
            heapq.heappush(ready, k)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(nodes[k])
        for out in nodes[k].output:
            for j in waiting.pop(out, []):
                missing[j] -= 1
                if missing[j] == 0:
                    heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise InternalError(f"graph has a cycle or dangling inputs ({len(nodes) - len(order)} nodes unsortable)")
    del graph.node[:]
    graph.node.extend(order)


# ---------------------------------------------------------------------------- where nodes came from

_LAYER = re.compile(r"layer[._/](\d+)")


def node_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> module scope, from the exporter's metadata (dynamo) or the node name (torchscript)."""
    scopes = {}
    for node in model.graph.node:
        scope = None
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    parts = ast.literal_eval(prop.value)
                    scope = parts[-2] if len(parts) >= 2 else None
                except (ValueError, SyntaxError):
                    scope = None
        if scope is None and node.name.startswith("/"):
            scope = node.name.rsplit("/", 1)[0]
        if scope:
            scopes[node.name] = scope
    return scopes


def layer_label(node, scopes: dict[str, str]) -> str:
    """``layer.N`` when the node's scope says which layer, else the node's own name (a ``NodeProto``
    or an onnx-graphsurgeon node)."""
    scope = scopes.get(node.name, node.name)
    found = _LAYER.search(scope) or _LAYER.search(node.name)
    return f"layer.{found.group(1)}" if found else (node.name or getattr(node, "op", None) or node.op_type)


# ---------------------------------------------------------------------------- precision


def precision(model: onnx.ModelProto) -> str:
    """int8 when the graph has Q/DQ nodes, fp16 when it holds fp16 weights, else fp32."""
    if set(QDQ_OPS) & {n.op_type for n in model.graph.node}:
        return "int8"
    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def precision_of(path: str | os.PathLike) -> str:
    return precision(skeleton(path))


def require_fp32(model: onnx.ModelProto, name: str, target: str) -> None:
    """Refuse a graph that is already fp16 or int8 as the input of a precision pass."""
    found = precision(model)
    if found != "fp32":
        raise DebertrtError(f"{name} is already {found}: convert the fp32 model.onnx (or model.plugin.onnx) "
                            f"to {target} instead")


# ---------------------------------------------------------------------------- sessions


def run_batches(session, feeds: list[dict], what: str = "batch", output_names=None) -> Iterator[dict]:
    """``session.run`` over ``feeds``, yielding name -> array dicts; an ONNX Runtime failure becomes a
    one-line ``DebertrtError`` naming the batch."""
    names = list(output_names) if output_names else [o.name for o in session.get_outputs()]
    for k, feed in enumerate(feeds):
        try:
            values = session.run(names, feed)
        except DebertrtError:
            raise
        except Exception as exc:
            raise DebertrtError(f"{what} {k}: ONNX Runtime failed: {first_line(exc)}") from exc
        yield dict(zip(names, values))
