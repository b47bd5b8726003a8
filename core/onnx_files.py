"""ONNX files: reading and atomic writing (with external data past the protobuf limit), one
initializer at a time, and *weight stubs*.

Weights are never copied whole: files are read and written one initializer at a time, and a graph
edit can carry weight stubs (name, type and dims, no data) whose bytes every writer and session
takes from the model they came from (``initializers_with``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import DebertrtError, InternalError, first_line

PROTOBUF_LIMIT = 2 * 1024**3  # a protobuf cannot exceed 2 GiB: larger models keep their weights beside the graph
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


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


def _read_streamed(path: Path, stubs: bool = False) -> onnx.ModelProto:
    """``onnx.load`` without its copy of the file's bytes: everything but the initializers is parsed in
    one piece, then each initializer from its own slice of the file (the inverse of ``write_model``);
    ``stubs``: each initializer kept as its ``weight_stub`` only."""
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
            init = onnx.TensorProto.FromString(f.read(length))
            model.graph.initializer.append(weight_stub(init) if stubs else init)
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
    try:
        return _read_streamed(Path(path), stubs=True)
    except Exception as exc:  # as ``load``
        raise DebertrtError(f"cannot read {path} as ONNX: {first_line(exc)}") from exc
