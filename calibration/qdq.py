"""Where int8 Q/DQ go, how they are written, and the check that they went nowhere else.

Placement (checked by ``check_placement``; the tests run it on every artifact):

* Q/DQ only on the inputs of MatMul/Gemm nodes that multiply a run-time activation by a
  weight (a MatMul of constants, like the relative-position embeddings times the key/query
  weights, is folded by the builder and stays float):
  the activation gets QuantizeLinear → DequantizeLinear (int8, symmetric, zero point 0,
  per tensor), the weight is stored as int8 with a per-channel DequantizeLinear on its
  output-channel axis (MatMul B [K, N]: axis 1; Gemm with transB: axis 0);
* never on outputs, biases, Softmax, LayerNorm, residual Adds or DisentangledAttention
  nodes: a DequantizeLinear output feeds MatMul/Gemm nodes only (a tensor that also feeds
  a residual Add keeps its float edge to it); a DisentangledFlashAttention node takes float
  q/k/v (the projections' outputs) and its context is quantized where the output projection
  reads it, as any activation;
* MatMuls of two activations (q·kᵀ, c2p/p2c scores, probs·v) stay float by default: in
  DeBERTa their outputs feed the disentangled-attention sum and the softmax, whose
  absolute precision matters (an int8 score of magnitude 60 is off by 0.25), and
  TensorRT cannot fuse them into its MHA kernels past the plugin anyway
  (``Int8Options(quantize_bmm=True)`` quantizes them too, both inputs per tensor).

ONNX Runtime's ``QDQQuantizer`` writes the Q/DQ (format QDQ, int8 symmetric activations and
per-channel symmetric weights, no bias quantization, no output quantization); a small pass then
keeps DequantizeLinear outputs away from anything but MatMul/Gemm (ORT rewires every consumer
of a quantized tensor).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from onnx import TensorProto

from debertrt.core import onnx_utils as ox
from debertrt.core.errors import InternalError
from debertrt.plugins.graph_types import is_plugin_node
from debertrt.plugins.spec import FLASH_OP_TYPE

QUANTIZED_OPS = ("MatMul", "Gemm")
Q_OPS = ox.QDQ_OPS


def weight_input(node, inits: dict) -> int | None:
    """1 when the MatMul/Gemm's B input is a constant 2-D float weight (None: not a weight layer)."""
    init = inits.get(node.input[1]) if len(node.input) > 1 else None
    if init is not None and init.data_type == TensorProto.FLOAT and len(init.dims) == 2:
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
    inits = ox.initializer_map(model.graph)
    dynamic = dynamic_tensors(model)
    names = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS or is_plugin_node(node) or node.input[0] not in dynamic:
            continue
        if weight_input(node, inits) is not None:
            names.append(node.name)
        elif quantize_bmm and node.op_type == "MatMul" and all(i in dynamic for i in node.input[:2]):
            names.append(node.name)
    return names


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
    ox.toposort(model.graph)
    del model.graph.value_info[:]
    model.producer_name = "debertrt.calibration.int8"
    return model


def restrict_qdq(full, prepared, nodes: list[str]):
    """The Q/DQ model quantizing only ``nodes``, derived from ``full`` (``build_qdq`` of a superset of
    them): the MatMuls outside ``nodes`` get their float inputs back, as ``build_qdq(prepared, ranges,
    nodes)`` would write them, without running the quantizer again."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(full)
    _restrict_dq_consumers(model, set(nodes), prepared)
    return model


def _restrict_dq_consumers(model, quantized: set[str], prepared) -> None:
    """ORT feeds a quantized tensor's DQ output to *all* its consumers (a residual Add, a
    MatMul left in float that shares the activation or the weight): give every consumer
    outside ``quantized`` its float tensor back, then drop Q/DQ and int8 weights left unused."""
    from onnxruntime.quantization.quant_utils import add_dequant_output_suffix

    graph = model.graph
    inits = ox.initializer_map(graph)
    float_weights = ox.initializer_map(prepared.graph)
    weight_of = {add_dequant_output_suffix(name): name for name in float_weights}
    producer = ox.producers(graph)
    consumer = ox.consumers(graph)
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
    inits = ox.initializer_map(graph)
    consumer = ox.consumers(graph)
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
                copy.name = ox.unique_name(f"{name}_{node.name}", taken)
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
    inits = ox.initializer_map(graph)
    consumer = ox.consumers(graph)
    producer = ox.producers(graph)
    q_count = dq_count = weights = 0
    quantized = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            q_count += 1
            users = consumer.get(node.output[0], [])
            if not users or any(u.op_type != "DequantizeLinear" for u in users):
                raise InternalError(f"QuantizeLinear {node.name!r} feeds {[u.op_type for u in users]}, not only DQ")
            src = producer.get(node.input[0])
            # DisentangledAttention outputs scores (softmax input): never quantized. The fused node's
            # output is the context the output projection reads: an activation like any other.
            if src is not None and (src.op_type in Q_OPS or (is_plugin_node(src) and src.op_type != FLASH_OP_TYPE)):
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
                if init.data_type != TensorProto.INT8:
                    raise InternalError(f"weight {init.name!r} is not int8")
                for user in users:
                    if node.output[0] != user.input[1]:
                        raise InternalError(f"quantized weight {init.name!r} is not the B input of {user.name!r}")
                    axis = ox.attr(node, "axis", 1)
                    expect = 0 if (user.op_type == "Gemm" and ox.attr(user, "transB", 0)) else len(init.dims) - 1
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

                if np.any(numpy_helper.to_array(zp) != 0) or zp.data_type != TensorProto.INT8:
                    raise InternalError(f"DequantizeLinear {node.name!r}: zero point must be int8 0 (symmetric)")
    return {"quantize_linear": q_count, "dequantize_linear": dq_count, "quantized_weights": weights,
            "quantized_nodes": sorted(quantized)}
