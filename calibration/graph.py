"""ONNX helpers only the precision passes need: their report paths and folding the exporter's
weight transposes."""

from __future__ import annotations

import os
from pathlib import Path

from debertrt.core import onnx_utils as ox
from debertrt.core.artifacts import sibling


def report_paths(out_path: str | os.PathLike) -> tuple[Path, Path]:
    """A precision pass's JSON and Markdown reports beside its artifact."""
    return sibling(out_path, ".json"), sibling(out_path, ".md")


def fold_weight_transposes(model) -> int:
    """Replace ``Transpose(2-D float initializer)`` by the transposed initializer.

    The exporter leaves such Transposes where a weight has two users (DeBERTa-v3's shared
    query/key projections of content and relative positions) and is too large for its
    constant folding; quantizers then see an activation instead of a weight."""
    from onnx import numpy_helper

    inits = ox.initializer_map(model.graph)
    keep, folded = [], 0
    for node in model.graph.node:
        init = inits.get(node.input[0]) if node.op_type == "Transpose" and node.input else None
        if init is None or init.data_type not in ox.FLOAT_TYPES or len(init.dims) != 2:
            keep.append(node)
            continue
        perm = ox.attr(node, "perm")
        if perm and list(perm) != [1, 0]:
            keep.append(node)
            continue
        model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(init).T.copy(), node.output[0]))
        folded += 1
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {n for node in model.graph.node for n in node.input} | {o.name for o in model.graph.output}
    for init in list(model.graph.initializer):
        if init.name not in used:
            model.graph.initializer.remove(init)
    return folded
