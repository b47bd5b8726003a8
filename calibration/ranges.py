"""Measured activation ranges: run the fp32 graph with every float tensor as an output.

Both precision passes start here: fp16 picks its fp32 islands from the largest magnitudes,
int8 refuses data on which the fp32 model already produces inf/NaN.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from debertrt.core.errors import DebertrtError

from debertrt.core import onnx_utils as ox
from debertrt.plugins.ort import ort_session
from debertrt.plugins.graph_types import value_types



@dataclass
class TensorRanges:
    """max |x| per float tensor over the calibration batches (graph outputs included)."""

    amax: dict[str, float] = field(default_factory=dict)
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


OVERFLOW_ADVICE = "the model overflows on this data — check the weights and the inputs before calibrating"


def collect_ranges(model, feed_list: list[dict], tensors: list[str] | None = None,
                   workdir: str | os.PathLike | None = None, graph: str = "fp32",
                   advice: str = OVERFLOW_ADVICE) -> TensorRanges:
    """Run ``model`` (an fp32 ``ModelProto``, or the ``graph`` named) on ``feed_list``, return max |x| of
    ``tensors`` (default: every float tensor, each materialised in its own type), raising
    ``DebertrtError`` with ``advice`` on a non-finite value."""
    import onnx

    typed = value_types(model)
    types = {n: t.tensor_type.elem_type for n, t in typed.items()}
    names = tensors if tensors is not None else float_tensors(model, types)
    outputs = [o.name for o in model.graph.output]
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = set(outputs)
    for name in names:
        if name in present or name not in typed:
            continue
        vi = onnx.ValueInfoProto(name=name)
        vi.type.tensor_type.elem_type = typed[name].tensor_type.elem_type
        augmented.graph.output.append(vi)
        present.add(name)
    watched = [n for n in names if n in present] + [o for o in outputs if o not in names]
    producer = ox.producers(model.graph)
    ranges = TensorRanges()
    with tempfile.TemporaryDirectory(prefix="debertrt-ranges.", dir=workdir) as tmp:
        sess = ort_session(augmented, base_dir=tmp)
        del augmented
        for k, feed in enumerate(feed_list):
            try:
                values = sess.run(watched, feed)
            except DebertrtError:
                raise
            except Exception as exc:
                raise DebertrtError(f"calibration batch {k}: ONNX Runtime failed on the fp32 graph: "
                                    f"{str(exc).splitlines()[0]}") from exc
            for name, value in zip(watched, values):
                value = np.asarray(value)
                if value.dtype.kind != "f" or value.size == 0:
                    continue
                finite = np.isfinite(value)
                if not finite.all():
                    node = producer.get(name)
                    what = f"{node.op_type} node {node.name!r}" if node is not None else "the graph"
                    kind = "NaN" if np.isnan(value).any() else "inf"
                    raise DebertrtError(
                        f"calibration batch {k}: tensor {name!r} (output of {what}) holds {kind} in the {graph} graph "
                        f"({int((~finite).sum())} of {value.size} values); {advice}")
                amax = float(np.abs(value).max())
                ranges.amax[name] = max(ranges.amax.get(name, 0.0), amax)
            ranges.batches += 1
    return ranges
