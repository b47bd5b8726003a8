"""ONNX Runtime sessions for every graph debertrt writes, plugin graphs included.

A plugin graph's ``DisentangledAttention`` and ``DisentangledFlashAttention`` nodes (domain
``debertrt``) run through their NumPy references (``debertrt.plugins.reference``,
``debertrt.plugins.flash.reference``) as onnxruntime-extensions PyOps. The session is made
from an in-memory copy of the model in which each plugin node becomes one of three PyOp
variants per op (a PyOp has a fixed input count) in the ``ai.onnx.contrib`` domain; the file
on disk is not touched. A malformed plugin node is a one-line ``DebertrtError``.

PyOp limits, measured with onnxruntime-extensions 0.15.2, and how they are handled:

* PyOp cannot declare float16/bfloat16 tensors (registering one aborts the process), so
  a non-float32 plugin node gets Casts to float32 around its float inputs in the copy; the
  references compute in float32 anyway and the result is cast back to the I/O type, which
  is exactly the ops' contract (accumulate in fp32 whatever the I/O type).
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
from dataclasses import dataclass
from pathlib import Path

from debertrt.core.errors import DebertrtError
from debertrt.core.onnx_utils import attr

from .graph_types import elem_types, is_plugin_node, op_spec_of
from .spec import DISENTANGLED_ATTENTION, DISENTANGLED_FLASH_ATTENTION, OpSpec

PYOP_DOMAIN = "ai.onnx.contrib"
SERIALIZE_LIMIT = 256 * 1024**2  # larger in-memory models reach ONNX Runtime through a file, not a bytes copy


@dataclass(frozen=True)
class PluginOp:
    """How one plugin op runs as PyOps: its spec, PyOp name prefix and float attributes."""

    spec: OpSpec
    pyop_prefix: str
    float_attrs: tuple[str, ...]
    int_inputs: int  # trailing int32 inputs (the rest are float)

    def pyop_type(self, has_c2p: bool, has_p2c: bool) -> str:
        return self.pyop_prefix + "_c2p" * has_c2p + "_p2c" * has_p2c


PLUGIN_OPS = {
    DISENTANGLED_ATTENTION.op_type: PluginOp(DISENTANGLED_ATTENTION, "DebertrtDisentangledAttention",
                                             ("pos_scale",), 1),
    DISENTANGLED_FLASH_ATTENTION.op_type: PluginOp(DISENTANGLED_FLASH_ATTENTION, "DebertrtDisentangledFlashAttention",
                                                   ("q_scale", "k_scale", "pos_scale"), 2),
}

_lock = threading.Lock()
_registered: set[str] = set()
_errors: list[BaseException] = []


def ort_session(source, base_dir: str | os.PathLike | None = None, threads: int | None = None, options=None,
                weights=None):
    """An ``onnxruntime.InferenceSession`` on the CPU, plugin nodes included, for ``source``: an ONNX
    file, or an in-memory ``ModelProto`` (not modified) whose external data, if any, lies in
    ``base_dir``. ``options``: ``SessionOptions`` (default: quiet, ``threads`` intra-op threads).
    ``weights``: a model holding the data of ``source``'s weight stubs (see ``session_for_model``)."""
    import onnx
    import onnxruntime as ort

    from debertrt.core.onnx_utils import load, skeleton, with_weight_stubs

    options = options or _options(threads)
    if isinstance(source, onnx.ModelProto):
        model = source
    else:
        path = Path(source)
        if not any(is_plugin_node(n) for n in skeleton(path).graph.node):
            return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        model, base_dir = load(path, external_data=False), path.parent
    if not any(is_plugin_node(n) for n in model.graph.node):
        return session_for_model(model, base_dir, options, weights=weights)
    # the PyOp rewrite edits a copy without the weights' bytes; the session takes them from the original
    sources = [model] + ([weights] if weights is not None else [])
    if weights is not None and not model.graph.initializer:  # a weight-free copy (outputs added) runs with these
        structure = onnx.ModelProto()
        structure.CopyFrom(model)
        structure.graph.initializer.extend(with_weight_stubs(weights).graph.initializer)
        model = structure
    types = elem_types(model)
    plugin = with_weight_stubs(model)
    register_pyops(plugin_model_for_ort(plugin, types))
    import onnxruntime_extensions

    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    return session_for_model(plugin, base_dir, options, session_class=_plugin_session_class(), weights=sources)


def _options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return options


def one_shot_options(threads: int | None = None, prepack: bool = True):
    """Options for a session that runs a few large batches once (calibration, checks, scoring): no
    memory-pattern plan (sized for the largest shape seen, then kept) and no arena (it keeps what the
    largest batch took until the session closes), and an execution order that frees activations sooner.
    ``prepack=False``: MatMul weights are not repacked for MLAS when the session loads (a second copy
    of them, built in seconds; worth it only for sessions that run many batches)."""
    import onnxruntime as ort

    options = _options(threads)
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = False
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # measured: a lower peak than the default
    return options


def plugin_op(node) -> PluginOp | None:
    """How a ``NodeProto`` of one of our plugin ops runs as PyOps, else None."""
    spec = op_spec_of(node)
    return PLUGIN_OPS[spec.op_type] if spec is not None else None


def _check_node(node, op: PluginOp) -> tuple[bool, bool, dict]:
    """(has_c2p, has_p2c, float attributes) of a plugin node; a one-line DebertrtError if malformed."""
    label = f"{op.spec.op_type} node {node.name!r}"
    flags = {}
    for name in ("has_c2p", "has_p2c"):
        value = attr(node, name, 1)
        if value not in (0, 1):
            raise DebertrtError(f"{label}: {name}={value!r}, expected 0 or 1: rerun the rewrite")
        flags[name] = bool(value)
    if not any(flags.values()):
        raise DebertrtError(f"{label}: has_c2p = has_p2c = 0; the op needs one positional input: rerun the rewrite")
    names = list(node.input)
    expected = op.spec.input_names(**flags)
    if len(names) != len(expected) or not all(names):
        raise DebertrtError(f"{label}: {len(names)} inputs {names} for has_c2p={flags['has_c2p']:d}, "
                            f"has_p2c={flags['has_p2c']:d}; expected {len(expected)} ({', '.join(expected)})")
    attrs = {}
    for name in op.float_attrs:
        try:
            attrs[name] = op.spec.field(name).check(attr(node, name, 1.0))
        except (TypeError, ValueError) as exc:
            raise DebertrtError(f"{label}: attribute {name}: {exc}") from exc
    return flags["has_c2p"], flags["has_p2c"], attrs


def plugin_model_for_ort(model, types: dict[str, int] | None = None) -> set[tuple[str, bool, bool]]:
    """Turn ``model``'s plugin nodes (in place) into PyOp nodes; returns the (op type, has_c2p, has_p2c) used.
    ``types``: ``elem_types`` of the model (default: inferred from it)."""
    from onnx import TensorProto, helper

    graph = model.graph
    types = types if types is not None else elem_types(model)
    variants = set()
    new_nodes = []
    for node in graph.node:
        op = plugin_op(node)
        if op is None:
            new_nodes.append(node)
            continue
        has_c2p, has_p2c, attrs = _check_node(node, op)
        variants.add((op.spec.op_type, has_c2p, has_p2c))
        float_type = types.get(node.input[0], TensorProto.FLOAT)
        inputs, out = list(node.input), node.output[0]
        if float_type != TensorProto.FLOAT:
            for k in range(len(inputs) - op.int_inputs):
                cast = f"{node.name or out}/pyop_in{k}_f32"
                new_nodes.append(helper.make_node("Cast", [inputs[k]], [cast], name=cast, to=TensorProto.FLOAT))
                inputs[k] = cast
            out = f"{node.output[0]}/pyop_f32"
        new_nodes.append(helper.make_node(op.pyop_type(has_c2p, has_p2c), inputs, [out], name=node.name,
                                          domain=PYOP_DOMAIN, **attrs))
        if float_type != TensorProto.FLOAT:
            new_nodes.append(helper.make_node("Cast", [out], [node.output[0]], name=f"{node.name or out}/pyop_out",
                                              to=float_type))
    del graph.node[:]
    graph.node.extend(new_nodes)
    opsets = {o.domain for o in model.opset_import}
    if PYOP_DOMAIN not in opsets:
        model.opset_import.append(helper.make_opsetid(PYOP_DOMAIN, 1))
    return variants


def register_pyops(variants) -> None:
    """Register the PyOp variants with onnxruntime-extensions, once per process."""
    with _lock:
        for op_type, has_c2p, has_p2c in sorted(variants):
            op = PLUGIN_OPS[op_type]
            pyop_type = op.pyop_type(has_c2p, has_p2c)
            if pyop_type in _registered:
                continue
            from onnxruntime_extensions import PyCustomOpDef, onnx_op

            floats = len(op.spec.input_names(has_c2p=has_c2p, has_p2c=has_p2c)) - op.int_inputs
            inputs = [PyCustomOpDef.dt_float] * floats + [PyCustomOpDef.dt_int32] * op.int_inputs
            onnx_op(op_type=pyop_type, inputs=inputs, outputs=[PyCustomOpDef.dt_float],
                    attrs={name: PyCustomOpDef.dt_float for name in op.float_attrs})(_kernel(op, has_c2p, has_p2c))
            _registered.add(pyop_type)


def _gather_reference(c2c, *rest, has_c2p: bool, has_p2c: bool, pos_scale: float = 1.0):
    from .reference import disentangled_attention

    rest = list(rest)
    c2p = rest.pop(0) if has_c2p else None
    p2c = rest.pop(0) if has_p2c else None
    return disentangled_attention(c2c, c2p, p2c, rest[0], pos_scale)


def _flash_reference(q, k, v, *rest, has_c2p: bool, has_p2c: bool, **scales):
    from .flash.reference import flash_attention

    rest = list(rest)
    pos_key = rest.pop(0) if has_c2p else None
    pos_query = rest.pop(0) if has_p2c else None
    return flash_attention(q, k, v, pos_key, pos_query, rest[0], rest[1], **scales)


_REFERENCES = {DISENTANGLED_ATTENTION.op_type: _gather_reference,
               DISENTANGLED_FLASH_ATTENTION.op_type: _flash_reference}


def _failure_shape(op_type: str, args) -> tuple:
    """The output shape to fill with NaN when the reference fails (what the op would have returned)."""
    import numpy as np

    shape = np.shape(args[0])
    if op_type == DISENTANGLED_FLASH_ATTENTION.op_type and len(shape) == 4:
        return (shape[0], shape[2], shape[1] * shape[3])
    return shape


def _kernel(op: PluginOp, has_c2p: bool, has_p2c: bool):
    reference = _REFERENCES[op.spec.op_type]

    def plugin_pyop(*args, **attrs):
        import numpy as np

        try:
            return reference(*args, has_c2p=has_c2p, has_p2c=has_p2c, **attrs).astype(np.float32)
        except BaseException as exc:  # raising here would abort the whole process (see module doc)
            with _lock:
                _errors.append(exc)
            return np.full(_failure_shape(op.spec.op_type, args), np.nan, dtype=np.float32)

    return plugin_pyop


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
    if isinstance(exc, DebertrtError):
        return exc
    return DebertrtError(f"a plugin reference op failed: {type(exc).__name__}: {exc}")


def session_for_model(model, base_dir: str | os.PathLike | None, options=None, session_class=None, weights=None):
    """A CPU session for an in-memory ``model``: as bytes when it is small, else through a hidden
    temporary file in ``base_dir`` (beside its external data, or with its weights streamed beside it,
    so that no serialized copy of them is held), removed once the session has loaded. ``weights``: a
    model (or a list, searched in order) holding the data ``model`` runs with: all its initializers when
    ``model`` has none of its own (e.g. one with outputs added), else those of ``model``'s weight stubs
    (``onnx_utils.initializers_with``)."""
    import onnxruntime as ort

    from debertrt.core.onnx_utils import (PROTOBUF_LIMIT, initializers_with, uses_external_data, weight_bytes,
                                          without_initializers, write_model, write_with_weights)

    session_class = session_class or ort.InferenceSession
    options = options or _options()
    providers = ["CPUExecutionProvider"]
    sources = list(weights) if isinstance(weights, (list, tuple)) else [weights] if weights is not None else []
    separate = bool(sources)
    external = any(uses_external_data(m) for m in [model] + sources)
    size = 0 if external else weight_bytes(model if model.graph.initializer else sources[0])  # ByteSize() serializes
    if not external and (size <= SERIALIZE_LIMIT or (base_dir is None and size < PROTOBUF_LIMIT)):
        if separate:
            whole = without_initializers(model)
            whole.graph.initializer.extend(initializers_with(model, *sources))
            model = whole
        return session_class(model.SerializeToString(), sess_options=options, providers=providers)
    if base_dir is None:
        raise DebertrtError("an in-memory model with external data needs the folder of its data (base_dir)")
    fd, tmp = tempfile.mkstemp(prefix=".session.", suffix=".onnx", dir=str(base_dir))
    os.close(fd)
    tmp = Path(tmp)
    try:
        if external and not separate:
            write_model(model, tmp, external=False)  # the external references stay, relative to base_dir
        elif separate:
            write_with_weights(model, sources, tmp)
        else:
            write_with_weights(without_initializers(model), model, tmp)
        return session_class(str(tmp), sess_options=options, providers=providers)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".data").unlink(missing_ok=True)

