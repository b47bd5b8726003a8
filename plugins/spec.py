"""The one machine-readable description of debertrt's plugin ops.

Each op is one :class:`OpSpec`: its identity (op type, TensorRT plugin namespace and
version, ONNX domain), its fields (attributes, with kinds and bounds), its inputs in order,
its I/O dtypes and, per dtype, the tolerance its kernels are checked against. The rewrite
emits nodes from it (``OpSpec.node_attributes``), the NumPy references and ONNX Runtime ops
check against it, and the C++ creator and READMEs state the same fields (tests compare them).

``DisentangledAttention`` (the gather op; one node per layer after ``debertrt rewrite``)::

    c2c        [..., Sq, Sk]      float   content->content scores, already scaled
    c2p        [..., Sq, 2*span]  float   content->position scores (has_c2p = 1)
    p2c        [..., Sk, 2*span]  float   position->content scores (has_p2c = 1)
    rel_table  [2*Smax - 1]       int32   rel_table[r + Smax - 1] = bucket(r)

    delta(i, j)   = clamp(rel_table[i - j + Smax - 1] + span, 0, 2*span - 1)
    out[..., i, j] = c2c[..., i, j] + pos_scale * (c2p[..., i, delta] + p2c[..., j, delta])

``span`` is read at run time from the positional inputs' last dimension, so v1 (whose
span is min(S, max_relative_positions)) and v2/v3 (static span) share one op.

``DisentangledFlashAttention`` (the fused op: the whole attention of one layer, no S x S
tensor)::

    q, k, v    [B, H, S, D]   float   per-head query, key, value
    pos_key    [H, 2P, D]     float   projected relative-position keys (has_c2p = 1)
    pos_query  [H, 2P, D]     float   projected relative-position queries (has_p2c = 1)
    mask       [B, S]         int32   nonzero = real token
    rel_table  [2*Smax - 1]   int32   as above

    delta(i, j) = clamp(rel_table[i - j + Smax - 1] + P, 0, 2P - 1)
    q'          = q * q_scale
    s[i, j]     = k_scale * q'[i].k[j]
                + pos_scale * (q'[i].pos_key[h, delta] + k[j].pos_query[h, delta])
    s[i, j]     = finfo(dtype).min where mask[b, j] == 0
    out[b, i, h*D:(h+1)*D] = sum_j softmax_j(s)[i, j] * v[b, h, j]     (fp32 arithmetic)

Output ``[B, S, H*D]`` in q's dtype. Rows of padding queries hold finite values, never
NaN/Inf (a fully padded batch row included). See ``plugins/flash/README.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PLUGIN_NAMESPACE = "debertrt"
PLUGIN_VERSION = "1"
DOMAIN = "debertrt"


@dataclass(frozen=True)
class Field:
    """One node attribute / plugin field."""

    name: str
    kind: str  # "int" or "float"
    doc: str
    minimum: float | None = None
    maximum: float | None = None

    def check(self, value):
        """``value`` converted to this field's kind; ``ValueError`` when out of bounds or not finite."""
        value = int(value) if self.kind == "int" else float(value)
        if self.kind == "float" and not math.isfinite(value):
            raise ValueError(f"{self.name} must be finite, got {value}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{self.name} must be >= {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{self.name} must be <= {self.maximum}, got {value}")
        return value


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, symbolic shape, allowed dtypes and presence flag."""

    name: str
    shape: tuple[str, ...]
    dtypes: tuple[str, ...]
    doc: str
    present_when: str | None = None  # the 0/1 field that says whether this optional input is there


@dataclass(frozen=True)
class OpSpec:
    op_type: str
    doc: str
    fields: tuple[Field, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    io_dtypes: tuple[str, ...]  # float I/O dtypes the kernels advertise; each one has a check
    tolerances: dict = field(default_factory=dict)  # io dtype -> bound on ``tolerance_metric``
    tolerance_metric: str = ""
    # float I/O dtypes the TensorRT plugin advertises (supportsFormatCombination); None: io_dtypes
    plugin_dtypes: tuple[str, ...] | None = None
    plugin_namespace: str = PLUGIN_NAMESPACE
    plugin_version: str = PLUGIN_VERSION
    domain: str = DOMAIN

    @property
    def tensorrt_dtypes(self) -> tuple[str, ...]:
        """Float I/O dtypes of the TensorRT plugin (the self-test reports what it accepts; tests compare)."""
        return self.io_dtypes if self.plugin_dtypes is None else self.plugin_dtypes

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    def input_names(self, **flags) -> list[str]:
        """Input names in order for the given presence flags (``has_c2p=1`` ...)."""
        return [t.name for t in self.inputs if t.present_when is None or flags.get(t.present_when, 1)]

    def node_attributes(self, **values) -> dict:
        """Attributes of one node, namespace and version always explicit; every field required and checked."""
        missing = [n for n in self.field_names if n not in values]
        unknown = sorted(set(values) - set(self.field_names))
        if missing or unknown:
            raise ValueError(f"{self.op_type} attributes: missing {missing}, unknown {unknown}")
        attrs = {"plugin_namespace": self.plugin_namespace, "plugin_version": self.plugin_version}
        attrs.update({f.name: f.check(values[f.name]) for f in self.fields})
        if not (attrs.get("has_c2p") or attrs.get("has_p2c")):
            raise ValueError(f"a {self.op_type} node needs at least one of has_c2p and has_p2c")
        return attrs


_FLOAT_DTYPES = ("float32", "float16", "bfloat16")
_TABLE = TensorSpec("rel_table", ("2*Smax-1",), ("int32",), "rel_table[r + Smax - 1] = bucket(r)")
_BUCKET_FIELDS = (
    Field("position_buckets", "int", "log-bucket count, 0 for linear relative positions", 0),
    Field("max_relative_positions", "int", "the model's max_relative_positions", 1),
)
_PRESENCE_FIELDS = (
    Field("has_c2p", "int", "1 when the content->position term is present", 0, 1),
    Field("has_p2c", "int", "1 when the position->content term is present", 0, 1),
)

DISENTANGLED_ATTENTION = OpSpec(
    op_type="DisentangledAttention",
    doc="c2c + pos_scale * (c2p[delta] + p2c[delta]): the gathers of one layer's attention scores",
    fields=_BUCKET_FIELDS[:2] + (Field("pos_scale", "float", "factor on the gathered c2p + p2c terms"),)
    + _PRESENCE_FIELDS,
    inputs=(
        TensorSpec("c2c", ("...", "Sq", "Sk"), _FLOAT_DTYPES, "content->content scores, already scaled"),
        TensorSpec("c2p", ("...", "Sq", "2*span"), _FLOAT_DTYPES, "content->position scores", "has_c2p"),
        TensorSpec("p2c", ("...", "Sk", "2*span"), _FLOAT_DTYPES, "position->content scores", "has_p2c"),
        _TABLE,
    ),
    outputs=(TensorSpec("out", ("...", "Sq", "Sk"), _FLOAT_DTYPES, "scores, c2c's shape and dtype"),),
    io_dtypes=_FLOAT_DTYPES,
    tolerances={"float32": 1e-6, "float16": 1e-2, "bfloat16": 1e-2},
    tolerance_metric="||out - reference|| / ||reference||, reference in float64 on the same inputs",
)

DISENTANGLED_FLASH_ATTENTION = OpSpec(
    op_type="DisentangledFlashAttention",
    doc="softmax(masked disentangled scores) @ v for one layer, fused: no S x S tensor",
    fields=(
        Field("q_scale", "float", "factor on q before every product (v1: 1/sqrt(d*(1+n_pos)); v2/v3: 1)"),
        Field("k_scale", "float", "factor on the q.k product (v2/v3: 1/sqrt(d*(1+n_pos)); v1: 1)"),
        Field("pos_scale", "float", "factor on the c2p and p2c terms (v2/v3: 1/sqrt(d*(1+n_pos)); v1: 1)"),
    ) + _PRESENCE_FIELDS + _BUCKET_FIELDS,
    inputs=(
        TensorSpec("q", ("B", "H", "S", "D"), _FLOAT_DTYPES, "per-head query"),
        TensorSpec("k", ("B", "H", "S", "D"), _FLOAT_DTYPES, "per-head key"),
        TensorSpec("v", ("B", "H", "S", "D"), _FLOAT_DTYPES, "per-head value"),
        TensorSpec("pos_key", ("H", "2P", "D"), _FLOAT_DTYPES, "projected relative-position keys", "has_c2p"),
        TensorSpec("pos_query", ("H", "2P", "D"), _FLOAT_DTYPES, "projected relative-position queries", "has_p2c"),
        TensorSpec("mask", ("B", "S"), ("int32",), "nonzero = real token; keys with 0 are masked"),
        _TABLE,
    ),
    outputs=(TensorSpec("context", ("B", "S", "H*D"), _FLOAT_DTYPES, "attention context, q's dtype"),),
    io_dtypes=_FLOAT_DTYPES,
    # Inputs drawn N(0, 1); reference: the op in float32 on the same input values. float32 is
    # the interpreter's exact-dot bound; float16/bfloat16 cover rounding p and the output.
    tolerances={"float32": 1e-4, "float16": 2e-3, "bfloat16": 2e-2},
    tolerance_metric="max |out - reference| / max(1, |reference|) over non-padding query rows, inputs N(0, 1)",
    # The plugin's compiled kernels: fp32 (exact fp32 dots) spills registers, so it is not compiled.
    plugin_dtypes=("float16", "bfloat16"),
)

# Kernel limits of the Triton implementation (the references take any head dim; the TensorRT
# plugin's compiled kernels also need multiples of 16, see plugins/flash/README.md).
FLASH_MAX_HEAD_DIM = 128

# The DisentangledAttention names used across the code base.
OP_TYPE = DISENTANGLED_ATTENTION.op_type
FIELDS = DISENTANGLED_ATTENTION.fields
FIELD_NAMES = DISENTANGLED_ATTENTION.field_names
IO_DTYPES = DISENTANGLED_ATTENTION.io_dtypes

FLASH_OP_TYPE = DISENTANGLED_FLASH_ATTENTION.op_type
OPS = {op.op_type: op for op in (DISENTANGLED_ATTENTION, DISENTANGLED_FLASH_ATTENTION)}


def node_attributes(position_buckets: int, max_relative_positions: int, pos_scale: float,
                    has_c2p: bool, has_p2c: bool) -> dict:
    """Attributes of one DisentangledAttention node."""
    return DISENTANGLED_ATTENTION.node_attributes(
        position_buckets=position_buckets, max_relative_positions=max_relative_positions, pos_scale=pos_scale,
        has_c2p=bool(has_c2p), has_p2c=bool(has_p2c))


def flash_node_attributes(q_scale: float, k_scale: float, pos_scale: float, has_c2p: bool, has_p2c: bool,
                          position_buckets: int, max_relative_positions: int) -> dict:
    """Attributes of one DisentangledFlashAttention node."""
    return DISENTANGLED_FLASH_ATTENTION.node_attributes(
        q_scale=q_scale, k_scale=k_scale, pos_scale=pos_scale, has_c2p=bool(has_c2p), has_p2c=bool(has_p2c),
        position_buckets=position_buckets, max_relative_positions=max_relative_positions)
