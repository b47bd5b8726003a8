"""ONNX files and graphs: loading, atomic saving (with external data past the protobuf limit),
attributes, edges, topological order, precision, and running sessions over batches.

Plugin-aware type inference lives with the plugins (``debertrt.plugins.graph_types``): this
module knows no op of ours.

Weights are never copied whole: files are read and written one initializer at a time, and a graph
edit can carry *weight stubs* (name, type and dims, no data) whose bytes every writer and session
takes from the model they came from (``initializers_with``).

Length: over 400 lines because reading, writing and weight stubs share one wire-format view of
the file; split, each half would need the other's internals.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import heapq
import os
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import DebertrtError, InternalError, first_line

PROTOBUF_LIMIT = 2 * 1024**3  # a protobuf cannot exceed 2 GiB: larger models keep their weights beside the graph
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


# ---------------------------------------------------------------------------- files


def load(path: str | os.PathLike, external_data: bool = True) -> onnx.ModelProto:
    """The model at ``path`` (with its external data unless told otherwise), or a one-line ``DebertrtError``."""
    path = Path(path)
    if not path.is_file():
        raise DebertrtError(f"ONNX file {str(path)!r} not found")
    try:
        model = _read_streamed(path)
        if external_data and uses_external_data(model):
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        return model
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise DebertrtError(f"cannot read {path} as ONNX: {first_line(exc)}") from exc


def _read_streamed(path: Path) -> onnx.ModelProto:
    """``onnx.load`` without its copy of the file's bytes: everything but the initializers is parsed in
    one piece, then each initializer from its own slice of the file (the inverse of ``write_model``)."""
    model, rest, graph_rest, initializers = onnx.ModelProto(), bytearray(), bytearray(), []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while f.tell() < size:
            start = f.tell()
            field, wire = divmod(_read_varint(f), 8)
            if field == 7 and wire == 2:  # ModelProto.graph
                end = _read_varint(f)
                end += f.tell()
                while f.tell() < end:
                    begin = f.tell()
                    sub, sub_wire = divmod(_read_varint(f), 8)
                    if sub == 5 and sub_wire == 2:  # GraphProto.initializer
                        length = _read_varint(f)
                        initializers.append((f.tell(), length))
                        f.seek(length, os.SEEK_CUR)
                    else:
                        _skip_field(f, sub_wire)
                        graph_rest += _slice(f, begin)
            else:
                _skip_field(f, wire)
                rest += _slice(f, start)
        model.ParseFromString(bytes(rest))
        model.graph.MergeFromString(bytes(graph_rest))
        for offset, length in initializers:
            f.seek(offset)
            model.graph.initializer.add().ParseFromString(f.read(length))
    return model


def _read_varint(f) -> int:
    value = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise ValueError("truncated protobuf")
        value |= (byte[0] & 0x7F) << shift
        shift += 7
        if byte[0] < 0x80:
            return value


def _skip_field(f, wire: int) -> None:
    if wire == 0:
        _read_varint(f)
    elif wire in (1, 5):
        f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
    elif wire == 2:
        f.seek(_read_varint(f), os.SEEK_CUR)
    else:
        raise ValueError(f"unsupported protobuf wire type {wire}")


def _slice(f, begin: int) -> bytes:
    """The bytes from ``begin`` to the current position (one field, read back)."""
    end = f.tell()
    f.seek(begin)
    return f.read(end - begin)


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Half the protobuf limit leaves room for the graph itself (``ByteSize`` would serialize the model:
    seconds on a large one; the weights decide)."""
    return weight_bytes(model) > PROTOBUF_LIMIT // 2


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)


def write_model(model: onnx.ModelProto, path: str | os.PathLike, external: bool,
                weights: onnx.ModelProto | None = None) -> None:
    """Write ``model`` to ``path``, its weights in ``<name>.data`` beside it when ``external``; one
    initializer at a time, never a serialized copy of the whole model, and ``model`` unchanged.
    ``weights``: where the data of ``model``'s weight stubs is (``initializers_with``)."""
    path = Path(path)
    if external:
        write_with_weights(model, weights if weights is not None else model, path)
        return
    initializers = initializers_with(model, weights) if weights is not None else list(model.graph.initializer)
    structure = without_initializers(model)
    graph = structure.graph.SerializeToString()
    structure.ClearField("graph")
    sizes = [len(init.SerializeToString()) for init in initializers]  # a first pass for the length
    length = len(graph) + sum(1 + len(_varint(n)) + n for n in sizes)
    with open(path, "wb") as f:
        f.write(structure.SerializeToString())
        f.write(b"\x3a" + _varint(length))  # ModelProto.graph: field 7, length-delimited
        f.write(graph)
        for init in initializers:
            data = init.SerializeToString()
            f.write(b"\x2a" + _varint(len(data)))  # GraphProto.initializer: field 5, length-delimited
            f.write(data)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every initializer, as an inference session holds them."""
    return sum(int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in model.graph.initializer)


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with everything but ``graph.initializer``: copying it copies no weights."""
    copy = onnx.ModelProto()
    for fd, value in model.ListFields():
        if fd.name != "graph":
            target = getattr(copy, fd.name)
            if hasattr(value, "extend"):  # a repeated field
                target.extend(value)
            elif fd.type == fd.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                setattr(copy, fd.name, value)
    for fd, value in model.graph.ListFields():
        if fd.name == "initializer":
            continue
        if hasattr(value, "extend"):
            getattr(copy.graph, fd.name).extend(value)
        else:
            setattr(copy.graph, fd.name, value)
    return copy


def weight_stub(init: onnx.TensorProto) -> onnx.TensorProto:
    """The name, type and dims of ``init`` without its data: a placeholder a graph edit can carry (and
    type inference read) while the bytes stay in the original (``initializers_with`` finds them)."""
    stub = onnx.TensorProto(name=init.name, data_type=init.data_type, doc_string=init.doc_string)
    stub.dims.extend(init.dims)
    return stub


def is_large_weight(init: onnx.TensorProto, elements: int = 256) -> bool:
    return init.data_type in FLOAT_TYPES and int(np.prod(init.dims)) > elements


def with_weight_stubs(model: onnx.ModelProto, elements: int = 256) -> onnx.ModelProto:
    """A copy of ``model`` whose float initializers of more than ``elements`` values are ``weight_stub``s
    (the rest copied whole): its size is the graph's, not the weights'."""
    copy = without_initializers(model)
    copy.graph.initializer.extend(weight_stub(init) if is_large_weight(init, elements) else init
                                  for init in model.graph.initializer)
    return copy


def initializers_with(structure: onnx.ModelProto, *weights: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The initializers ``structure`` runs with: its own, each weight stub taken from the first of
    ``weights`` holding data under its name; all of ``weights[0]``'s when it has none of its own."""
    own = list(structure.graph.initializer)
    if not own:
        return list(weights[0].graph.initializer) if weights else []
    found: dict[str, onnx.TensorProto] = {}
    for model in reversed(weights):
        found.update((init.name, init) for init in model.graph.initializer if _holds_data(init))
    missing = [init.name for init in own if not _holds_data(init) and init.name not in found
               and int(np.prod(init.dims))]
    if missing:
        raise InternalError(f"no data for the weight stubs {missing[:3]} ({len(missing)} in all)")
    return [found.get(init.name, init) if not _holds_data(init) else init for init in own]


def fill_stubs(model: onnx.ModelProto, weights: onnx.ModelProto) -> None:
    """Give each weight stub of ``model``, in place, the data of the tensor of its name in ``weights``."""
    stubs = {init.name: init for init in model.graph.initializer if not _holds_data(init)}
    for init in weights.graph.initializer:
        if init.name in stubs:
            stubs.pop(init.name).CopyFrom(init)


def _holds_data(init: onnx.TensorProto) -> bool:
    return init.data_location == onnx.TensorProto.EXTERNAL or any(
        init.HasField(f) if f == "raw_data" else len(getattr(init, f))
        for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"))


def write_with_weights(structure: onnx.ModelProto, weights, path: str | os.PathLike) -> Path:
    """Write ``structure`` (a model without initializers, or with weight stubs) with the initializers of
    ``weights`` (a model, or a list searched in order: ``initializers_with``) to ``path``, each float weight
    streamed into ``<name>.data``: one tensor at a time, neither model changed (``onnx.save`` with external
    data clears the bytes of the model it is given)."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    graph = onnx.GraphProto()
    with open(data, "wb") as f:
        for init in initializers_with(structure, *(weights if isinstance(weights, (list, tuple)) else [weights])):
            if init.data_location == onnx.TensorProto.EXTERNAL or init.data_type not in FLOAT_TYPES \
                    or int(np.prod(init.dims)) <= 256:
                graph.initializer.add().CopyFrom(init)  # small, or already on disk (relative to its folder)
                continue
            raw = init.raw_data if init.HasField("raw_data") else numpy_helper.to_array(init).tobytes()
            offset = f.tell()
            f.write(raw)
            f.write(b"\0" * (-f.tell() % 64))  # aligned, so ONNX Runtime can map it
            out = graph.initializer.add()
            out.name, out.data_type = init.name, init.data_type
            out.dims.extend(init.dims)
            for key, value in (("location", data.name), ("offset", offset), ("length", len(raw))):
                out.external_data.add(key=key, value=str(value))
            out.data_location = onnx.TensorProto.EXTERNAL
    model = without_initializers(structure)
    model.graph.initializer.extend(graph.initializer)
    onnx.save_model(model, str(path))
    return path


@contextlib.contextmanager
def staged_save(model: onnx.ModelProto, final: str | os.PathLike, external: bool | None = None,
                check: str | None = "basic", weights: onnx.ModelProto | None = None) -> Iterator[Path]:
    """Write ``model`` to a hidden staging folder beside ``final`` and yield the staged file (to be
    validated); on success move its data, then the graph, into place (a graph on disk always has
    its data). ``external``: None decides by size. ``check``: None, "basic" or "full" (ONNX checker
    with shape inference); a failed check is our bug (``InternalError``). ``weights``: see ``write_model``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    external = needs_external_data(model) if external is None else external
    data_name = final.name + ".data"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        staged = staging / final.name
        write_model(model, staged, external, weights)
        del model, weights  # written: a caller that passed the only reference frees it while the file is checked
        if check:
            try:
                onnx.checker.check_model(str(staged), full_check=check == "full")
            except Exception as exc:
                raise InternalError(f"the written graph fails the ONNX checker: {first_line(exc)}") from exc
        yield staged
        if external:
            os.replace(staging / data_name, final.parent / data_name)
        elif (final.parent / data_name).exists():
            (final.parent / data_name).unlink()
        os.chmod(staged, 0o644)
        os.replace(staged, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save(model: onnx.ModelProto, final: str | os.PathLike, external: bool | None = None,
         check: str | None = "basic", weights: onnx.ModelProto | None = None) -> Path:
    """Write ``model`` to ``final`` atomically (see ``staged_save``)."""
    staged = staged_save(model, final, external, check, weights)
    del model, weights  # a caller that passed the only reference frees it while the file is checked
    with staged:
        pass
    return Path(final)


# ---------------------------------------------------------------------------- nodes and edges


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


def skeleton(path: str | os.PathLike) -> onnx.ModelProto:
    """The model at ``path`` without its weights' bytes (initializers keep name, type and shape): what
    tells its precision and whether it holds plugin nodes. Read once per file version: a parity run asks
    both of every artifact, and parsing a full-size model takes seconds. Shared: do not modify it."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return load(path, external_data=False)  # the one-line "not found"
    return _skeleton(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _skeleton(path: str, size: int, mtime_ns: int) -> onnx.ModelProto:
    model = load(path, external_data=False)
    for init in model.graph.initializer:
        init.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            init.ClearField(field)
    return model


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
