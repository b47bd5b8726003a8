"""The one description of the DisentangledAttention plugin op.

The rewrite emits nodes from it, the NumPy reference and ONNX Runtime custom op check
against it, and the C++ creator and README state the same fields (tests compare them).

Inputs, in this order (the optional ones are present exactly when their flag is 1)::

    c2c        [..., Sq, Sk]      float   content->content scores, already scaled
    c2p        [..., Sq, 2*span]  float   content->position scores (has_c2p = 1)
    p2c        [..., Sk, 2*span]  float   position->content scores (has_p2c = 1)
    rel_table  [2*Smax - 1]       int32   rel_table[r + Smax - 1] = bucket(r)

Output: ``out`` with c2c's shape and dtype::

    delta(i, j)   = clamp(rel_table[i - j + Smax - 1] + span, 0, 2*span - 1)
    out[..., i, j] = c2c[..., i, j] + pos_scale * (c2p[..., i, delta] + p2c[..., j, delta])

``span`` is read at run time from the positional inputs' last dimension, so v1 (whose
span is min(S, max_relative_positions)) and v2/v3 (static span) share one op.
"""

from __future__ import annotations

from dataclasses import dataclass

OP_TYPE = "DisentangledAttention"
PLUGIN_NAMESPACE = "debertrt"
PLUGIN_VERSION = "1"
DOMAIN = "debertrt"

# I/O dtypes the kernel advertises; each one is covered by a parity test.
IO_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # "int" or "float"
    doc: str
    minimum: float | None = None


FIELDS = (
    Field("position_buckets", "int", "log-bucket count, 0 for linear relative positions", 0),
    Field("max_relative_positions", "int", "the model's max_relative_positions", 1),
    Field("pos_scale", "float", "factor on the gathered c2p + p2c terms"),
    Field("has_c2p", "int", "1 when the c2p input is present", 0),
    Field("has_p2c", "int", "1 when the p2c input is present", 0),
)

FIELD_NAMES = tuple(f.name for f in FIELDS)


def node_attributes(position_buckets: int, max_relative_positions: int, pos_scale: float,
                    has_c2p: bool, has_p2c: bool) -> dict:
    """Attributes of one plugin node, namespace and version always explicit."""
    if not (has_c2p or has_p2c):
        raise ValueError("a DisentangledAttention node needs at least one of c2p and p2c")
    return {
        "plugin_namespace": PLUGIN_NAMESPACE,
        "plugin_version": PLUGIN_VERSION,
        "position_buckets": int(position_buckets),
        "max_relative_positions": int(max_relative_positions),
        "pos_scale": float(pos_scale),
        "has_c2p": int(bool(has_c2p)),
        "has_p2c": int(bool(has_p2c)),
    }
