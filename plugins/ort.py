"""ONNX Runtime sessions for every graph debertrt writes, plugin graphs included.

A plugin graph's ``DisentangledAttention`` nodes (domain ``debertrt``) run through the
NumPy reference (``debertrt.plugins.reference``) as onnxruntime-extensions PyOps. The
session is made from an in-memory copy of the model in which each plugin node becomes
one of three PyOp variants (a PyOp has a fixed input count) in the ``ai.onnx.contrib``
domain; the file on disk is not touched.

PyOp limits, measured with onnxruntime-extensions 0.15.2, and how they are handled:

* PyOp cannot declare float16/bfloat16 tensors (registering one aborts the process), so
  a non-float32 plugin node gets Casts to float32 around it in the copy; the reference
  computes in float32 anyway and the result is cast back to c2c's type, which is exactly
  the op's contract (accumulate in fp32 whatever the I/O type).
* An exception raised inside a PyOp terminates the process. The op body therefore
  catches everything, returns NaNs, and the session's ``run`` raises the recorded error.
* A PyOp's output is returned through a Python list, so plugin graphs run slower than
  plain ones; they are for checking, not for speed.

Heavy modules are imported lazily; a plain graph never imports onnxruntime-extensions.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from .spec import DOMAIN, OP_TYPE, PLUGIN_NAMESPACE

PYOP_DOMAIN = "ai.onnx.contrib"
# PyOp variants: (has_c2p, has_p2c) -> op type in the in-memory copy.
PYOP_TYPES = {
    (True, True): "DebertrtDisentangledAttention_c2p_p2c",
    (True, False): "DebertrtDisentangledAttention_c2p",
    (False, True): "DebertrtDisentangledAttention_p2c",
}

_lock = threading.Lock()
_registered: set[str] = set()
_errors: list[BaseException] = []


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` on the CPU for ``path``, plugin nodes included."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    options = _options(threads)
    model = onnx.load(str(path), load_external_data=False)
    if not any(is_plugin_node(n) for n in model.graph.node):
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    variants = plugin_model_for_ort(model)
    register_pyops(variants)
    import onnxruntime_extensions

    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    return session_for_model(model, path.parent, options, session_class=_plugin_session_class())


def _options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return options


def is_plugin_node(node) -> bool:
    """An ONNX ``NodeProto`` of our op (by domain, or by the TensorRT plugin attributes)."""
    if node.op_type != OP_TYPE:
        return False
    if node.domain == DOMAIN:
        return True
    return any(a.name == "plugin_namespace" and a.s.decode() == PLUGIN_NAMESPACE for a in node.attribute)


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def plugin_model_for_ort(model) -> set[tuple[bool, bool]]:
    """Turn ``model``'s plugin nodes (in place) into PyOp nodes; returns the variants used."""
    from onnx import TensorProto, helper

    graph = model.graph
    types = _tensor_types(model)
    variants = set()
    new_nodes = []
    for node in graph.node:
        if not is_plugin_node(node):
            new_nodes.append(node)
            continue
        has_c2p = bool(_attr(node, "has_c2p", 1))
        has_p2c = bool(_attr(node, "has_p2c", 1))
        names = [n for n in node.input if n]
        expected = 2 + has_c2p + has_p2c
        if len(names) != expected or not (has_c2p or has_p2c):
            raise ValueError(f"plugin node {node.name!r}: {len(names)} inputs for has_c2p={has_c2p:d}, "
                             f"has_p2c={has_p2c:d} (expected {expected})")
        variants.add((has_c2p, has_p2c))
        pos_scale = float(_attr(node, "pos_scale", 1.0))
        float_type = types.get(names[0], TensorProto.FLOAT)
        inputs, out = list(names), node.output[0]
        if float_type != TensorProto.FLOAT:
            for k in range(len(inputs) - 1):
                cast = f"{node.name or out}/pyop_in{k}_f32"
                new_nodes.append(helper.make_node("Cast", [inputs[k]], [cast], name=cast, to=TensorProto.FLOAT))
                inputs[k] = cast
            out = f"{node.output[0]}/pyop_f32"
        new_nodes.append(helper.make_node(PYOP_TYPES[(has_c2p, has_p2c)], inputs, [out], name=node.name,
                                          domain=PYOP_DOMAIN, pos_scale=pos_scale))
        if float_type != TensorProto.FLOAT:
            new_nodes.append(helper.make_node("Cast", [out], [node.output[0]], name=f"{node.name or out}/pyop_out",
                                              to=float_type))
    del graph.node[:]
    graph.node.extend(new_nodes)
    opsets = {o.domain for o in model.opset_import}
    if PYOP_DOMAIN not in opsets:
        model.opset_import.append(helper.make_opsetid(PYOP_DOMAIN, 1))
    return variants


def _tensor_types(model) -> dict[str, int]:
    """Element types of tensors, with plugin nodes seen as Identity(c2c) for shape inference."""
    import onnx
    from onnx import helper

    types = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    plugin_inputs = [n.input[0] for n in model.graph.node if is_plugin_node(n)]
    if all(name in types for name in plugin_inputs):
        return types
    scratch = onnx.ModelProto()
    scratch.CopyFrom(model)
    for init in scratch.graph.initializer:  # types only: keep dims and type, drop the bytes
        init.ClearField("raw_data")
        for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            init.ClearField(f)
        init.ClearField("external_data")
        init.data_location = onnx.TensorProto.DEFAULT
    for i, node in enumerate(scratch.graph.node):
        if is_plugin_node(node):
            scratch.graph.node[i].CopyFrom(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
    try:
        inferred = onnx.shape_inference.infer_shapes(scratch)
    except Exception:  # a graph shape inference cannot follow: fall back to float32
        return types
    for vi in inferred.graph.value_info:
        if vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    return types


def register_pyops(variants) -> None:
    """Register the PyOp variants with onnxruntime-extensions, once per process."""
    with _lock:
        for has_c2p, has_p2c in sorted(variants):
            op_type = PYOP_TYPES[(has_c2p, has_p2c)]
            if op_type in _registered:
                continue
            from onnxruntime_extensions import PyCustomOpDef, onnx_op

            inputs = [PyCustomOpDef.dt_float] * (1 + has_c2p + has_p2c) + [PyCustomOpDef.dt_int32]
            onnx_op(op_type=op_type, inputs=inputs, outputs=[PyCustomOpDef.dt_float],
                    attrs={"pos_scale": PyCustomOpDef.dt_float})(_kernel(has_c2p, has_p2c))
            _registered.add(op_type)


def _kernel(has_c2p: bool, has_p2c: bool):
    def disentangled_attention_pyop(*args, pos_scale: float = 1.0):
        import numpy as np

        try:
            from .reference import disentangled_attention

            c2c = args[0]
            rest = list(args[1:-1])
            c2p = rest.pop(0) if has_c2p else None
            p2c = rest.pop(0) if has_p2c else None
            return disentangled_attention(c2c, c2p, p2c, args[-1], pos_scale).astype(np.float32)
        except BaseException as exc:  # raising here would abort the whole process (see module doc)
            with _lock:
                _errors.append(exc)
            return np.full(np.shape(args[0]), np.nan, dtype=np.float32)

    return disentangled_attention_pyop


def _take_errors() -> list[BaseException]:
    with _lock:
        taken = list(_errors)
        _errors.clear()
    return taken


_session_class = None


def _plugin_session_class():
    """``InferenceSession`` whose ``run`` re-raises errors of the reference op (made lazily)."""
    global _session_class
    if _session_class is None:
        import onnxruntime as ort

        class PluginInferenceSession(ort.InferenceSession):
            """An InferenceSession over a plugin graph; the op runs the NumPy reference."""

            def run(self, output_names, input_feed, run_options=None):
                _take_errors()
                try:
                    result = super().run(output_names, input_feed, run_options)
                except Exception as exc:
                    errors = _take_errors()
                    if errors:
                        raise _op_error(errors[0]) from exc
                    raise
                errors = _take_errors()
                if errors:
                    raise _op_error(errors[0]) from errors[0]
                return result

        _session_class = PluginInferenceSession
    return _session_class


def _op_error(exc: BaseException):
    from debertrt.core.errors import DebertrtError

    return DebertrtError(f"the DisentangledAttention reference op failed: {type(exc).__name__}: {exc}")


def session_for_model(model, base_dir: str | os.PathLike, options=None, session_class=None):
    """A CPU session for an in-memory ``model`` whose external data (if any) lies in ``base_dir``.

    Models with external data are written to a hidden temporary file beside their data
    (removed once the session has loaded it); others go to ONNX Runtime as bytes.
    """
    import onnx
    import onnxruntime as ort
    from onnx.external_data_helper import uses_external_data

    session_class = session_class or ort.InferenceSession
    options = options or _options()
    providers = ["CPUExecutionProvider"]
    if not any(uses_external_data(t) for t in model.graph.initializer):
        return session_class(model.SerializeToString(), sess_options=options, providers=providers)
    fd, tmp = tempfile.mkstemp(prefix=".session.", suffix=".onnx", dir=str(base_dir))
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        return session_class(tmp, sess_options=options, providers=providers)
    finally:
        os.unlink(tmp)
