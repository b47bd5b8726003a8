"""ONNX Runtime runs DisentangledFlashAttention nodes through the NumPy oracle.

- a hand-built graph (flash node, then a MatMul that needs the node's [B, S, H*D] output
  shape) gives the oracle's result in float32 and float16, for c2p+p2c, c2p-only, p2c-only;
- malformed nodes (input count, flags, scale attributes) are one-line DebertrtErrors when
  the session is made; a bad input at run time is a DebertrtError and the session lives on;
- the calibration passes' type inference sees the node's real output shape.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from debertrt.core.errors import DebertrtError
from debertrt.plugins import spec
from debertrt.plugins.flash import check, reference
from debertrt.plugins.ort import ort_session

HEADS, HEAD_DIM, SPAN, SMAX = 2, 8, 6, 16
ELEM = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


def flash_graph(path, dtype, presence="both", attrs=None, inputs=None):
    """q, k, v, mask graph inputs; positional tensors, table and projection as initializers."""
    rng = np.random.default_rng(1)
    has_c2p, has_p2c = check.PRESENCE[presence]
    weights = {"pos_key": rng.standard_normal((HEADS, 2 * SPAN, HEAD_DIM)).astype(dtype),
               "pos_query": rng.standard_normal((HEADS, 2 * SPAN, HEAD_DIM)).astype(dtype),
               "rel_table": check.rel_table("v3", SMAX, rng),
               "proj": rng.standard_normal((HEADS * HEAD_DIM, 3)).astype(dtype)}
    node_attrs = spec.flash_node_attributes(0.9, 0.3, 0.25, has_c2p, has_p2c, 16, 64)
    node_attrs.update(attrs or {})
    names = inputs or spec.DISENTANGLED_FLASH_ATTENTION.input_names(has_c2p=has_c2p, has_p2c=has_p2c)
    node = helper.make_node(spec.FLASH_OP_TYPE, names, ["context"], name="attn", domain=spec.DOMAIN, **node_attrs)
    proj = helper.make_node("MatMul", ["context", "proj"], ["out"], name="proj")
    graph_inputs = [helper.make_tensor_value_info(n, ELEM[dtype], ["b", HEADS, "s", HEAD_DIM]) for n in "qkv"]
    graph_inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, ["b", "s"]))
    initializers = [numpy_helper.from_array(a, n) for n, a in weights.items() if n in names or n == "proj"]
    graph = helper.make_graph([node, proj], "flash", graph_inputs, [helper.make_tensor_value_info("out", ELEM[dtype],
                                                                                                 None)],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(spec.DOMAIN, 1)])
    onnx.save(model, str(path))
    return {n: weights[n] for n in ("pos_key", "pos_query", "rel_table") if n in names}, weights["proj"]


def feed(dtype, batch=3, seq=11):
    rng = np.random.default_rng(2)
    shape = (batch, HEADS, seq, HEAD_DIM)
    return {"q": rng.standard_normal(shape).astype(dtype), "k": rng.standard_normal(shape).astype(dtype),
            "v": rng.standard_normal(shape).astype(dtype),
            "mask": check.padding_mask(("right", "left", "all-pad")[:batch], seq, rng)}


@pytest.mark.parametrize("presence", sorted(check.PRESENCE))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_ort_session_runs_the_flash_reference(tmp_path, dtype, presence):
    weights, proj = flash_graph(tmp_path / "flash.onnx", dtype, presence)
    inputs = feed(dtype)
    context = reference.flash_attention(inputs["q"], inputs["k"], inputs["v"], weights.get("pos_key"),
                                        weights.get("pos_query"), inputs["mask"], weights["rel_table"], 0.9, 0.3, 0.25)
    session = ort_session(tmp_path / "flash.onnx")
    (got,) = session.run(None, inputs)
    assert got.dtype == dtype and got.shape == (3, 11, 3)
    expected = (context.astype(np.float32) @ proj.astype(np.float32)).astype(dtype)
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=1e-5,
                               atol=1e-5 if dtype == np.float32 else 2e-2)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("attrs,inputs,match", [
    ({}, ["q", "k", "v", "pos_key", "mask", "rel_table"], r"5 inputs|6 inputs .*expected 7"),
    ({"has_c2p": 0, "has_p2c": 0}, None, "has_c2p = has_p2c = 0"),
    ({"has_p2c": 2}, None, "has_p2c=2, expected 0 or 1"),
    ({"k_scale": float("inf")}, None, "k_scale .*finite"),
])
def test_malformed_flash_nodes_are_one_line_errors(tmp_path, attrs, inputs, match):
    flash_graph(tmp_path / "bad.onnx", np.float32, "both", attrs=attrs, inputs=inputs)
    with pytest.raises(DebertrtError, match=match) as info:
        ort_session(tmp_path / "bad.onnx")
    assert "\n" not in str(info.value) and "DisentangledFlashAttention node 'attn'" in str(info.value)


def test_flash_run_time_errors_raise_and_the_session_lives_on(tmp_path):
    flash_graph(tmp_path / "flash.onnx", np.float32)
    session = ort_session(tmp_path / "flash.onnx")
    with pytest.raises(DebertrtError, match="exceeds the relative-position table"):
        session.run(None, feed(np.float32, seq=SMAX + 1))
    assert np.isfinite(session.run(None, feed(np.float32))[0]).all()


def test_calibration_types_see_the_flash_output_shape(tmp_path):
    from debertrt.plugins.graph_types import value_types

    flash_graph(tmp_path / "flash.onnx", np.float16)
    types = value_types(onnx.load(str(tmp_path / "flash.onnx")))
    context = types["context"].tensor_type
    assert context.elem_type == TensorProto.FLOAT16
    assert [d.dim_param or d.dim_value for d in context.shape.dim] == ["b", "s", HEADS * HEAD_DIM]
