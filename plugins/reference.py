"""NumPy reference of the DisentangledAttention op: the oracle for every other backend.

See ``debertrt.plugins.spec`` for the contract. Arithmetic is float32 whatever the I/O
dtype (the CUDA kernel accumulates in float32 too); the result is cast back to c2c's dtype.
"""

from __future__ import annotations

import numpy as np


def relative_position_table(position_buckets: int, max_relative_positions: int, max_len: int) -> np.ndarray:
    """``table[r + max_len - 1] = bucket(r)`` for r in (-max_len, max_len), as int32.

    Log buckets come from transformers' own ``make_log_bucket_position`` run in float32
    exactly as the model runs it, so indices are bit-identical to the reference.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    import torch

    rel = torch.arange(-(max_len - 1), max_len, dtype=torch.long)
    if position_buckets > 0 and max_relative_positions > 0:
        from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

        rel = make_log_bucket_position(rel, position_buckets, max_relative_positions).to(torch.long)
    return rel.numpy().astype(np.int32)


def attention_span(c2p: np.ndarray | None, p2c: np.ndarray | None) -> int:
    pos = c2p if c2p is not None else p2c
    if pos is None:
        raise ValueError("DisentangledAttention needs at least one of c2p and p2c")
    width = pos.shape[-1]
    if width < 2 or width % 2:
        raise ValueError(f"positional scores need an even last dimension >= 2, got {width}")
    return width // 2


def delta_index(sq: int, sk: int, span: int, rel_table: np.ndarray) -> np.ndarray:
    """delta[i, j] = clamp(rel_table[i - j + Smax - 1] + span, 0, 2*span - 1)."""
    smax = (rel_table.shape[0] + 1) // 2
    if max(sq, sk) > smax:
        raise ValueError(f"sequence length {max(sq, sk)} exceeds the relative-position table ({smax}): rewrite "
                         f"the graph with --max-sequence {max(sq, sk)} or more")
    rel = np.arange(sq)[:, None] - np.arange(sk)[None, :]
    return np.clip(rel_table[rel + smax - 1].astype(np.int64) + span, 0, 2 * span - 1)


def disentangled_attention(c2c: np.ndarray, c2p: np.ndarray | None, p2c: np.ndarray | None,
                           rel_table: np.ndarray, pos_scale: float = 1.0) -> np.ndarray:
    span = attention_span(c2p, p2c)
    sq, sk = c2c.shape[-2:]
    delta = delta_index(sq, sk, span, rel_table)
    acc = c2c.astype(np.float32)
    pos = np.zeros_like(acc)
    if c2p is not None:
        pos += np.take_along_axis(c2p.astype(np.float32), np.broadcast_to(delta, c2p.shape[:-1] + (sk,)), axis=-1)
    if p2c is not None:
        # p2c[..., j, delta(i, j)]: gather along p2c's rows with delta transposed.
        p2c_t = np.take_along_axis(p2c.astype(np.float32), np.broadcast_to(delta.T, p2c.shape[:-1] + (sq,)), axis=-1)
        pos += np.swapaxes(p2c_t, -1, -2)
    return (acc + np.float32(pos_scale) * pos).astype(c2c.dtype)
