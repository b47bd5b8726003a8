"""Small ONNX helpers shared by the precision passes: loading, types, edges, atomic saving."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from debertrt.compiler.artifacts import sibling
from debertrt.compiler.errors import DebertrtError, first_line

PROTOBUF_LIMIT = 2 * 1024**3
FLOAT_TYPES = (1, 10, 16)  # FLOAT, FLOAT16, BFLOAT16


def report_paths(out_path: str | os.PathLike) -> tuple[Path, Path]:
    """A precision pass's JSON and Markdown reports beside its artifact."""
    return sibling(out_path, ".json"), sibling(out_path, ".md")


def load(path: str | os.PathLike):
    """The model at ``path`` with its external data, or a one-line ``DebertrtError``."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise DebertrtError(f"ONNX file {str(path)!r} not found")
    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as exc:
        raise DebertrtError(f"cannot read {path} as ONNX: {first_line(exc)}") from exc


def is_plugin_node(node) -> bool:
    from debertrt.plugins.ort import is_plugin_node as check

    return check(node)


def value_types(model) -> dict[str, "onnx.TypeProto"]:  # noqa: F821
    """Tensor name -> TypeProto for every tensor shape inference can type (plugin nodes are
    seen as standard nodes with their output's shape and type: ``plugins.ort.shape_stand_in``)."""
    import onnx

    from debertrt.plugins.ort import shape_stand_in

    scratch = onnx.ModelProto()
    scratch.CopyFrom(model)
    for init in scratch.graph.initializer:  # types only: drop the bytes of weights (inference reads small
        if init.data_type not in FLOAT_TYPES or int(np.prod(init.dims)) <= 64:  # int constants: keep those)
            continue
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                      "string_data", "external_data"):
            init.ClearField(field)
        init.data_location = onnx.TensorProto.DEFAULT
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


def elem_types(model) -> dict[str, int]:
    return {name: t.tensor_type.elem_type for name, t in value_types(model).items()}


def consumers(graph) -> dict[str, list]:
    found = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                found[name].append(node)
    return found


def producers(graph) -> dict[str, object]:
    return {out: node for node in graph.node for out in node.output if out}


def initializer_map(graph) -> dict[str, object]:
    return {init.name: init for init in graph.initializer}


def constant_values(graph) -> dict[str, "np.ndarray"]:  # noqa: F821
    """Values of initializers and Constant-node outputs (small graphs of constants only)."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def name_nodes(model) -> None:
    """Give every node a unique name (decisions and quantizer options are keyed by it)."""
    taken = set()
    for k, node in enumerate(model.graph.node):
        if not node.name or node.name in taken:
            node.name = unique_name(node.name or f"{node.op_type}_{k}", taken)
        taken.add(node.name)


def unique_name(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def save(model, final: str | os.PathLike, check: bool = True) -> Path:
    """Write ``model`` to ``final`` atomically (data first, graph last), with its weights in
    ``final.data`` when the protobuf would exceed 2 GiB; optionally run the full ONNX checker."""
    import onnx

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    data_name = final.name + ".data"
    external = model.ByteSize() > PROTOBUF_LIMIT // 2
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        staged = staging / final.name
        onnx.save_model(model, str(staged), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        if check:
            try:
                onnx.checker.check_model(str(staged), full_check=True)
            except Exception as exc:
                from debertrt.compiler.errors import InternalError

                raise InternalError(f"the written graph fails the ONNX checker: {exc}") from exc
        if external:
            os.replace(staging / data_name, final.parent / data_name)
        elif (final.parent / data_name).exists():
            (final.parent / data_name).unlink()
        os.chmod(staged, 0o644)
        os.replace(staged, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def session(model, workdir: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session for an in-memory model (plugin nodes included), written to
    a temporary file in ``workdir`` (which must not hold a same-named file) for the session."""
    import onnx

    from debertrt.plugins.ort import ort_session

    workdir = Path(workdir)
    fd, tmp = tempfile.mkstemp(prefix=".calib.", suffix=".onnx", dir=str(workdir))
    os.close(fd)
    tmp = Path(tmp)
    data = tmp.with_name(tmp.name + ".data")
    try:
        external = model.ByteSize() > PROTOBUF_LIMIT // 2
        onnx.save_model(model, str(tmp), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        try:
            return ort_session(tmp, threads=threads)
        except DebertrtError:
            raise
        except Exception as exc:
            raise DebertrtError(f"ONNX Runtime cannot load the graph: {first_line(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        data.unlink(missing_ok=True)


def toposort(graph) -> None:
    """Order ``graph.node`` topologically (stable: ties keep their current order)."""
    import heapq

    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    waiting = defaultdict(list)
    missing = []
    ready = []
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
        from debertrt.compiler.errors import InternalError

        raise InternalError(f"graph has a cycle or dangling inputs ({len(nodes) - len(order)} nodes unsortable)")
    del graph.node[:]
    graph.node.extend(order)


def fold_weight_transposes(model) -> int:
    """Replace ``Transpose(2-D float initializer)`` by the transposed initializer.

    The exporter leaves such Transposes where a weight has two users (DeBERTa-v3's shared
    query/key projections of content and relative positions) and is too large for its
    constant folding; quantizers then see an activation instead of a weight."""
    from onnx import numpy_helper

    inits = initializer_map(model.graph)
    keep, folded = [], 0
    for node in model.graph.node:
        init = inits.get(node.input[0]) if node.op_type == "Transpose" and node.input else None
        if init is None or init.data_type not in FLOAT_TYPES or len(init.dims) != 2:
            keep.append(node)
            continue
        perm = [a.ints for a in node.attribute if a.name == "perm"]
        if perm and list(perm[0]) != [1, 0]:
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
