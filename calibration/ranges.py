"""Measured activation ranges: run the fp32 graph with max |x| of every float tensor as an output.

Both precision passes start here: fp16 picks its fp32 islands from the largest magnitudes,
int8 refuses data on which the fp32 model already produces inf/NaN and, with method "max", takes
its MatMul/Gemm activation ranges from the same pass (min and max per tensor).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

from debertrt.core.errors import DebertrtError, first_line
from debertrt.core.resources import BatchForecast, require_memory

from debertrt.core import onnx_utils as ox
from debertrt.plugins.ort import one_shot_options, ort_session
from debertrt.plugins.graph_types import value_types


@dataclass
class TensorRanges:
    """max |x|, min x and max x per float tensor over the calibration batches (graph outputs included)."""

    amax: dict[str, float] = field(default_factory=dict)
    lowest: dict[str, float] = field(default_factory=dict)
    highest: dict[str, float] = field(default_factory=dict)
    batches: int = 0

    def get(self, name: str, default: float = 0.0) -> float:
        return self.amax.get(name, default)


def float_tensors(model, types: dict[str, int]) -> list[str]:
    """Outputs of nodes that are float tensors, in graph order."""
    names, seen = [], set()
    for node in model.graph.node:
        for out in node.output:
            if out and out not in seen and types.get(out) in ox.FLOAT_TYPES:
                seen.add(out)
                names.append(out)
    return names


SESSION_OVERHEAD = 256 * 1024**2  # ONNX Runtime's own allocations beside the weights
FP16_INF = 65520.0  # the smallest magnitude fp16 rounds to inf
OVERFLOW_ADVICE = "the model overflows on this data — check the weights and the inputs before calibrating"


def collect_ranges(model, feed_list: list[dict], tensors: list[str] | None = None,
                   workdir: str | os.PathLike | None = None, graph: str = "fp32",
                   advice: str = OVERFLOW_ADVICE, also: list[str] = (), on_outputs=None) -> TensorRanges:
    """Run ``model`` (an fp32 ``ModelProto``, or the ``graph`` named) on ``feed_list``, return the ranges of
    ``tensors`` (default: every node's float output) and of ``also`` (e.g. float graph inputs), raising
    ``DebertrtError`` with ``advice`` on a non-finite value. ``on_outputs(k, {name: array})``: given each
    batch's graph outputs from the same run (a check needs no second session).

    Streams: each tensor gets ``ReduceMax``, ``ReduceMin`` and ``ReduceSum`` nodes placed right after its
    producer, and only those scalars are graph outputs, so ONNX Runtime frees every activation as in
    plain inference; one batch's intermediates are never all alive at once. A non-finite value (inf in
    the max or min, NaN in the sum) reruns that batch with the tensor itself as an output, for the message."""
    types = {n: t.tensor_type.elem_type for n, t in value_types(model).items()}
    names = tensors if tensors is not None else float_tensors(model, types)
    listed = set(names)
    names = names + [n for n in also if n not in listed]
    outputs = [o.name for o in model.graph.output]
    watched = [n for n in names if n in types or n in outputs] + [o for o in outputs if o not in names]
    augmented, stats = _with_reductions(model, watched, types, keep_outputs=on_outputs is not None)
    # ONNX Runtime on the CPU runs an fp16 chain in fp32 unless a tensor is fetched in fp16, so an fp16
    # overflow shows as |x| beyond what fp16 rounds to a finite value
    limits = {n: FP16_INF if types.get(n) == TensorProto.FLOAT16 else np.inf for n in stats}
    ranges = TensorRanges()
    with tempfile.TemporaryDirectory(prefix="debertrt-ranges.", dir=workdir) as tmp:
        require_memory(ox.weight_bytes(model) + SESSION_OVERHEAD, f"an ONNX Runtime session of the {graph} graph",
                       "the weights alone do not fit: use a machine with more memory")
        # ``model``'s weights reach the session one tensor at a time; a plugin graph's are not read back
        sess = ort_session(augmented, base_dir=tmp, options=one_shot_options(), weights=model)
        del augmented
        fetch = [out for outs in stats.values() for out in outs] + (outputs if on_outputs is not None else [])
        forecast = BatchForecast(f"range collection on the {graph} graph",
                                 "use a smaller --batch-size or --max-length (or fewer --batches)")
        for k, feed in enumerate(feed_list):
            with forecast.batch(feed, k):
                values = dict(zip(fetch, _run(sess, fetch, feed, k, graph)))
            for name, (high, low, check) in stats.items():
                highest, lowest = float(values[high]), float(values[low])
                amax = max(highest, -lowest)
                # an inf shows in the max or min, a NaN in the sum (an inf sum of finite values, e.g. of
                # masks at -3.4e38, is no sign of either)
                if np.isnan(values[check]) or not amax < limits.get(name, np.inf):
                    _raise_non_finite(model, name, feed, k, graph, advice, tmp)
                ranges.amax[name] = max(ranges.amax.get(name, 0.0), amax)
                ranges.lowest[name] = min(ranges.lowest.get(name, np.inf), lowest)
                ranges.highest[name] = max(ranges.highest.get(name, -np.inf), highest)
            if on_outputs is not None:
                on_outputs(k, {name: values[name] for name in outputs})
            ranges.batches += 1
    return ranges


def _with_reductions(model, names: list[str], types: dict[str, int], keep_outputs: bool = False):
    """``model`` without its initializers (see ``onnx_utils.write_with_weights``) whose outputs are
    max x, min x and Σx (float32 scalars) of each of ``names`` (after its own, with ``keep_outputs``)."""
    from onnx import helper

    augmented = ox.without_initializers(model)
    graph = augmented.graph
    taken = {n for node in graph.node for n in list(node.input) + list(node.output)} \
        | {i.name for i in graph.input} | {i.name for i in model.graph.initializer} | {n.name for n in graph.node}
    wanted = set(names)
    stats: dict[str, tuple[str, str, str]] = {}

    def reductions(name: str) -> list:
        # max x, min x and Σx: no full-size temporary
        high, low, check = (ox.unique_name(f"{name}/range_{s}", taken) for s in ("max", "min", "sum"))
        nodes, source = [], name
        if types.get(name) != TensorProto.FLOAT:  # reduced in fp32, where the sum does not overflow
            source = ox.unique_name(f"{name}/range_f32", taken)
            nodes.append(helper.make_node("Cast", [name], [source], name=source, to=TensorProto.FLOAT))
        stats[name] = (high, low, check)
        return nodes + [helper.make_node(op, [source], [out], name=out, keepdims=0)
                        for op, out in (("ReduceMax", high), ("ReduceMin", low), ("ReduceSum", check))]

    # each tensor's reductions right after its producer: ONNX Runtime runs nodes in this order, and a
    # tensor is freed once its last reader ran
    nodes = [n for i in graph.input if i.name in wanted for n in reductions(i.name)]
    for node in graph.node:
        nodes.append(node)
        nodes += [n for out in node.output if out in wanted and out not in stats for n in reductions(out)]
    del graph.node[:]
    graph.node.extend(nodes)
    if not keep_outputs:
        del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(out, TensorProto.FLOAT, []) for outs in stats.values()
                        for out in outs)
    return augmented, {n: stats[n] for n in names if n in stats}


def _run(sess, names: list[str], feed: dict, k: int, graph: str) -> list:
    try:
        return sess.run(names, feed)
    except DebertrtError:
        raise
    except Exception as exc:
        raise DebertrtError(f"calibration batch {k}: ONNX Runtime failed on the {graph} graph: "
                            f"{first_line(exc)}") from exc


def _raise_non_finite(model, name: str, feed: dict, k: int, graph: str, advice: str, tmp: str) -> None:
    """Rerun batch ``k`` with ``name`` itself as an output and say where and what is not finite."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if name not in {o.name for o in probe.graph.output}:
        vi = onnx.ValueInfoProto(name=name)
        vi.type.tensor_type.elem_type = value_types(model)[name].tensor_type.elem_type
        probe.graph.output.append(vi)
    value = np.asarray(_run(ort_session(probe, base_dir=tmp), [name], feed, k, graph)[0])
    finite = np.isfinite(value)
    if finite.all():
        return  # only the sum overflowed (its partial sums reached +inf and -inf)
    node = ox.producers(model.graph).get(name)
    what = f"{node.op_type} node {node.name!r}" if node is not None else "the graph"
    kind = "NaN" if np.isnan(value).any() else "inf"
    raise DebertrtError(
        f"calibration batch {k}: tensor {name!r} (output of {what}) holds {kind} in the {graph} graph "
        f"({int((~finite).sum())} of {value.size} values); {advice}")
