"""How ONNX tooling sees our plugin ops: which nodes are ours, and what shape inference should
take them for.

ONNX shape inference knows no op of the ``debertrt`` domain, so each plugin node is replaced by
standard nodes with the same output type and shape (``shape_stand_in``) for the inference:
``DisentangledAttention`` returns c2c's type and shape (an Identity of its first input);
``DisentangledFlashAttention`` returns q [B, H, S, D] as [B, S, H·D] (a Transpose and a Reshape).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from debertrt.core.errors import DebertrtError, first_line
from debertrt.core.onnx_utils import FLOAT_TYPES

from .spec import DISENTANGLED_ATTENTION, OPS, OpSpec


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


def _without_weight_bytes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for inference: large float initializers keep dims and type, not their bytes (small
    integer constants stay: shape inference reads them)."""
    scratch = onnx.ModelProto()
    scratch.CopyFrom(model)
    for init in scratch.graph.initializer:
        if init.data_type not in FLOAT_TYPES or int(np.prod(init.dims)) <= 64:
            continue
        for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                     "string_data", "external_data"):
            init.ClearField(name)
        init.data_location = onnx.TensorProto.DEFAULT
    return scratch


def value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Tensor name -> TypeProto for every tensor shape inference can type, plugin outputs included."""
    scratch = _without_weight_bytes(model)
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
