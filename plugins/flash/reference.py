"""NumPy reference of DisentangledFlashAttention (the oracle) and the op's input validation.

The scores are built with the DisentangledAttention oracle (``debertrt.plugins.reference``),
so both ops share one index arithmetic: delta(i, j) = clamp(rel_table[i - j + Smax - 1] + P,
0, 2P - 1). Everything is float32 whatever the I/O dtype; the result is cast to q's dtype.
Contract: ``debertrt.plugins.spec.DISENTANGLED_FLASH_ATTENTION``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from debertrt.core.errors import DebertrtError

from .. import reference as gather_reference
from ..spec import DISENTANGLED_FLASH_ATTENTION as SPEC


class OpDims(NamedTuple):
    batch: int
    heads: int
    seq: int
    head_dim: int
    span: int        # P: the positional inputs have 2P rows
    smax: int        # the table covers relative positions (-Smax, Smax)
    dtype: str       # the float I/O dtype ("float32", "float16", "bfloat16")


def dtype_name(dtype) -> str:
    """'float16' for numpy's float16 and torch.float16 alike."""
    return str(dtype).replace("torch.", "")


def op_dims(q, k, v, pos_key, pos_query, mask, rel_table) -> OpDims:
    """Check the inputs against the contract (NumPy arrays or torch tensors); their dimensions.

    Raises a one-line ``DebertrtError`` naming what is wrong.
    """
    name = SPEC.op_type
    if q.ndim != 4:
        raise DebertrtError(f"{name}: q must be [batch, heads, seq, head_dim], got shape {tuple(q.shape)}")
    batch, heads, seq, head_dim = (int(d) for d in q.shape)
    if seq < 1 or head_dim < 1 or batch < 1 or heads < 1:
        raise DebertrtError(f"{name}: q has an empty dimension {tuple(q.shape)}")
    for label, t in (("k", k), ("v", v)):
        if tuple(t.shape) != tuple(q.shape):
            raise DebertrtError(f"{name}: {label} has shape {tuple(t.shape)}, q has {tuple(q.shape)}: they must match")
    dtype = dtype_name(q.dtype)
    if dtype not in SPEC.io_dtypes:
        raise DebertrtError(f"{name}: q is {dtype}; the op takes {', '.join(SPEC.io_dtypes)}")
    positional = [(label, t) for label, t in (("pos_key", pos_key), ("pos_query", pos_query)) if t is not None]
    if not positional:
        raise DebertrtError(f"{name}: needs at least one of pos_key (c2p) and pos_query (p2c)")
    rows = None
    for label, t in positional:
        shape = tuple(int(d) for d in t.shape)
        if len(shape) != 3 or shape[0] != heads or shape[2] != head_dim or shape[1] < 2 or shape[1] % 2:
            raise DebertrtError(f"{name}: {label} must be [heads={heads}, 2P, head_dim={head_dim}] with an even "
                                f"2P >= 2, got {shape}")
        if rows is not None and shape[1] != rows:
            raise DebertrtError(f"{name}: pos_key has {rows} rows and pos_query {shape[1]}: they must match")
        rows = shape[1]
    for label, t in (("k", k), ("v", v)) + tuple(positional):
        if dtype_name(t.dtype) != dtype:
            raise DebertrtError(f"{name}: {label} is {dtype_name(t.dtype)} but q is {dtype}: q, k, v and the "
                                "positional inputs share one dtype")
    if tuple(mask.shape) != (batch, seq) or dtype_name(mask.dtype) != "int32":
        raise DebertrtError(f"{name}: mask must be int32 [batch={batch}, seq={seq}], got {dtype_name(mask.dtype)} "
                            f"{tuple(mask.shape)}")
    length = int(rel_table.shape[0]) if rel_table.ndim == 1 else 0
    if length < 1 or length % 2 == 0 or dtype_name(rel_table.dtype) != "int32":
        raise DebertrtError(f"{name}: rel_table must be int32 [2*Smax - 1], got {dtype_name(rel_table.dtype)} "
                            f"{tuple(rel_table.shape)}")
    smax = (length + 1) // 2
    if seq > smax:
        raise DebertrtError(f"{name}: sequence length {seq} exceeds the relative-position table ({smax}): "
                            "rebuild the table for a longer maximum length")
    return OpDims(batch, heads, seq, head_dim, rows // 2, smax, dtype)


def flash_attention(q, k, v, pos_key, pos_query, mask, rel_table, q_scale: float, k_scale: float,
                    pos_scale: float) -> np.ndarray:
    """The op on NumPy arrays: context ``[B, S, H*D]`` in q's dtype."""
    dims = op_dims(q, k, v, pos_key, pos_query, mask, rel_table)

    def f32(a):
        return None if a is None else np.asarray(a, dtype=np.float32)

    qs = f32(q) * np.float32(q_scale)
    kf = f32(k)
    c2c = np.float32(k_scale) * (qs @ kf.swapaxes(-1, -2))
    c2p = None if pos_key is None else qs @ f32(pos_key).swapaxes(-1, -2)        # [B, H, S, 2P]
    p2c = None if pos_query is None else kf @ f32(pos_query).swapaxes(-1, -2)    # [B, H, S, 2P]
    scores = gather_reference.disentangled_attention(c2c, c2p, p2c, np.asarray(rel_table), pos_scale)
    keep = (np.asarray(mask) != 0)[:, None, None, :]
    scores = np.where(keep, scores, np.float32(masked_score(q.dtype)))
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    context = probs @ f32(v)
    out = context.transpose(0, 2, 1, 3).reshape(dims.batch, dims.seq, dims.heads * dims.head_dim)
    return out.astype(q.dtype)


# transformers masks a key with torch.finfo(dtype).min of the I/O dtype (values of torch.finfo).
MASKED_SCORE = {"float32": -3.4028234663852886e38, "float16": -65504.0, "bfloat16": -3.3895313892515355e38}


def masked_score(dtype) -> float:
    """The score of a masked key, as transformers writes it: the lowest finite value of the I/O dtype."""
    return MASKED_SCORE[dtype_name(dtype)]
