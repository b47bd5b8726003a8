"""How ONNX tooling sees our plugin ops: which nodes are ours, what shape inference should take
them for, and which ops (namespace, version, node count, I/O dtypes) a graph uses.

ONNX shape inference knows no op of the ``debertrt`` domain, so each plugin node is replaced by
standard nodes with the same output type and shape (``shape_stand_in``) for the inference:
``DisentangledAttention`` returns c2c's type and shape (an Identity of its first input);
``DisentangledFlashAttention`` returns q [B, H, S, D] as [B, S, H·D] (a Transpose and a Reshape).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from debertrt.core.errors import DebertrtError, first_line
from debertrt.core.onnx_utils import all_nodes, attr, with_weight_stubs

from .spec import DISENTANGLED_ATTENTION, OPS, OpSpec

_DTYPE_NAMES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}


def op_spec_of(node) -> OpSpec | None:
    """The spec of a ``NodeProto`` of one of our ops (by op type plus our domain or TensorRT plugin
    namespace), else None."""
    spec = OPS.get(node.op_type)
    if spec is None:
        return None
    if node.domain == spec.domain:
        return spec
    namespaced = any(a.name == "plugin_namespace" and a.s.decode() == spec.plugin_namespace for a in node.attribute)
    return spec if namespaced else None


def is_plugin_node(node) -> bool:
    """An ONNX ``NodeProto`` of one of our plugin ops."""
    return op_spec_of(node) is not None


def shape_stand_in(node) -> list:
    """Standard ONNX nodes with a plugin node's output shape and type, for shape inference."""
    out = node.output[0]
    if node.op_type == DISENTANGLED_ATTENTION.op_type:
        return [helper.make_node("Identity", [node.input[0]], [out], name=node.name)]
    shape = helper.make_tensor(f"{out}/stand_in_shape", TensorProto.INT64, [3], [0, 0, -1])
    return [helper.make_node("Transpose", [node.input[0]], [f"{out}/stand_in_bshd"], perm=[0, 2, 1, 3]),
            helper.make_node("Constant", [], [f"{out}/stand_in_shape"], value=shape),
            helper.make_node("Reshape", [f"{out}/stand_in_bshd", f"{out}/stand_in_shape"], [out], name=node.name)]


def value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Tensor name -> TypeProto for every tensor shape inference can type, plugin outputs included."""
    scratch = with_weight_stubs(model, elements=64)  # small integer constants stay: shape inference reads them
    del scratch.graph.value_info[:]
    nodes = [n for node in scratch.graph.node for n in (shape_stand_in(node) if is_plugin_node(node) else [node])]
    del scratch.graph.node[:]
    scratch.graph.node.extend(nodes)
    try:
        inferred = onnx.shape_inference.infer_shapes(scratch)
    except Exception as exc:
        raise DebertrtError(f"ONNX shape inference failed on the model: {first_line(exc)}") from exc
    types = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type
    for init in model.graph.initializer:
        t = onnx.TypeProto()
        t.tensor_type.elem_type = init.data_type
        for d in init.dims:
            t.tensor_type.shape.dim.add().dim_value = d
        types[init.name] = t
    return types


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> element type (``TensorProto`` enum)."""
    return {name: t.tensor_type.elem_type for name, t in value_types(model).items()}


def plugin_usage(model: onnx.ModelProto, where: str = "the graph") -> list[dict]:
    """One entry per op of ours the graph uses, in ``OPS`` order: ``{"name", "namespace", "version",
    "nodes", "dtypes"}``; ``dtypes`` lists the float I/O types of its nodes (their first input's), read
    by shape inference only for ops whose TensorRT plugin takes fewer dtypes than the op (else ``[]``).

    Nodes are counted by op type whatever their domain, so one asking for another plugin namespace or
    version is a one-line ``DebertrtError`` (``where`` names the graph) rather than a node TensorRT
    would not find a creator for."""
    nodes = list(all_nodes(model.graph))
    usage, types = [], None
    for op in OPS.values():
        mine = [n for n in nodes if n.op_type == op.op_type]
        if not mine:
            continue
        asked = {(str(attr(n, "plugin_namespace", "")), str(attr(n, "plugin_version", ""))) for n in mine}
        if len(asked) > 1:
            raise DebertrtError(f"{where}: {op.op_type} nodes disagree on namespace/version {sorted(asked)}")
        namespace, version = asked.pop()
        if (namespace, version) != (op.plugin_namespace, op.plugin_version):
            raise DebertrtError(f"{where}: {op.op_type} nodes ask for namespace {namespace!r} version {version!r}, "
                                f"but this debertrt provides {op.plugin_namespace!r} version {op.plugin_version!r}: "
                                f"rerun the rewrite")
        dtypes = []
        if op.tensorrt_dtypes != op.io_dtypes:
            types = types if types is not None else elem_types(model)
            dtypes = sorted({_DTYPE_NAMES.get(types.get(n.input[0]), "unknown") for n in mine})
        usage.append({"name": op.op_type, "namespace": namespace, "version": version, "nodes": len(mine),
                      "dtypes": dtypes})
    return usage

