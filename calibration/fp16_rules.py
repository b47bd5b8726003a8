"""Which nodes of the fp16 graph stay float32, and why: the rules and measurements of the fp16 pass.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from debertrt.core import onnx_utils as ox
from debertrt.plugins.graph_types import is_plugin_node

from .options import FP16_MAX, KEEP_FP32_OPS, Fp16Options
from .ranges import TensorRanges

FLOAT = TensorProto.FLOAT


@dataclass
class Decision:
    fp32: dict[str, tuple[str, str]]        # node name -> (kind, detail)
    fp16: list[str]
    untouched: int                          # nodes without float tensors
    casts_inserted: int = 0
    casts_retargeted: int = 0


def _layer_norm_chains(model) -> set[str]:
    """Nodes of decomposed layer norms::

        x ─► ReduceMean ─► Sub(x, mean) ─► Pow(2) ─► ReduceMean ─► Add(eps) ─► Sqrt ─► Div(Sub, ·)

    found from each Sqrt: its ReduceMean/Pow/Sub/Add ancestors (4 hops) and its Div consumers.
    """
    producer, consumer = ox.producers(model.graph), ox.consumers(model.graph)
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
    producer = ox.producers(model.graph)
    found = set()
    for node in model.graph.node:
        if node.op_type != "Softmax":
            continue
        stack = [node.input[0]]
        while stack:
            up = producer.get(stack.pop())
            if up is None or up.name in found:
                continue
            if up.op_type not in SCORE_CHAIN_OPS and not is_plugin_node(up):
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
        float_in = [n for n in node.input if n and types.get(n) in ox.FLOAT_TYPES]
        is_data = any(n in data for n in float_in) or (
            node.op_type == "Gather" and node.input and node.input[0] in data)
        for out in node.output:
            if types.get(out) not in ox.FLOAT_TYPES:
                continue
            if is_data or is_plugin_node(node):
                data.add(out)
            else:
                index.add(out)
    return index


def decide(model, ranges: TensorRanges, options: Fp16Options, types: dict[str, int], weights=None) -> Decision:
    """Which nodes stay float32, and why. ``weights``: the model holding the data of ``model``'s weight
    stubs (``onnx_utils.with_weight_stubs``)."""
    inits = ox.initializer_map(model.graph)
    values = {**inits, **ox.initializer_map(weights.graph)} if weights is not None else inits
    consumer = ox.consumers(model.graph)
    producer = ox.producers(model.graph)
    fp32: dict[str, tuple[str, str]] = {}

    def keep(node, kind, detail):
        fp32.setdefault(node.name, (kind, detail))

    def has_float(node):
        return any(n and types.get(n) in ox.FLOAT_TYPES for n in list(node.input) + list(node.output))

    keep_ops = set(options.keep_ops)
    chains = _layer_norm_chains(model)
    scores = _softmax_input_chains(model) if options.softmax_inputs_fp32 else set()
    index = _index_tensors(model, types, inits)
    big_consts = {name for name, init in inits.items() if init.data_type == FLOAT
                  and _init_amax(values[name]) > FP16_MAX}
    for node in model.graph.node:
        if not has_float(node):
            continue
        if is_plugin_node(node) and not options.plugin_fp16:
            keep(node, "plugin", "DisentangledAttention kept in fp32 (plugin_fp16=False)")
        if node.op_type in keep_ops:
            keep(node, "op", KEEP_FP32_OPS.get(node.op_type, f"{node.op_type} kept in fp32"))
        if node.name in chains:
            keep(node, "layernorm-chain", "decomposed layer norm: statistics in fp32")
        if node.name in scores:
            keep(node, "softmax-input", "attention-score sum feeding a softmax (absolute precision matters)")
        float_outs = [o for o in node.output if types.get(o) in ox.FLOAT_TYPES]
        if float_outs and all(o in index for o in float_outs) and not is_plugin_node(node):
            keep(node, "index-arithmetic", "position / mask arithmetic (no weights upstream)")
        for name in node.input:
            if name in big_consts:
                keep(node, "constant-range", f"constant {name!r} exceeds the fp16 range (|x| = "
                                             f"{_init_amax(values[name]):.3g})")
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
