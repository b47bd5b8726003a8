"""Types and shapes of a graph that holds our plugin nodes, through ONNX shape inference.

ONNX shape inference knows no op of the ``debertrt`` domain, so each plugin node is seen as
its stand-in for the inference: ``DisentangledAttention`` returns c2c's type and shape, so
it is an Identity of its first input.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from debertrt.core.errors import DebertrtError, first_line
from debertrt.core.onnx_utils import FLOAT_TYPES

from .ort import is_plugin_node


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
    for i, node in enumerate(scratch.graph.node):
        if is_plugin_node(node):
            scratch.graph.node[i].CopyFrom(helper.make_node("Identity", [node.input[0]], [node.output[0]],
                                                            name=node.name))
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
