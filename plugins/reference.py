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
    gathered = []
    if c2p is not None:  # c2p[..., i, delta(i, j)]
        gathered.append(_gather_rows(c2p, np.arange(sq)[:, None], delta))
    if p2c is not None:  # p2c[..., j, delta(i, j)]
        gathered.append(_gather_rows(p2c, np.arange(sk)[None, :], delta))
    pos = gathered[0]  # a fresh float32 array: the sums below reuse it
    for more in gathered[1:]:
        pos += more
    pos *= np.float32(pos_scale)
    pos += c2c
    return pos.astype(c2c.dtype, copy=False)


def _gather_rows(scores: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``scores[..., rows[i, j], columns[i, j]]`` as float32: one flat gather per leading index (a
    ``take_along_axis`` over broadcast index arrays is several times slower on a model's batch)."""
    lead, (height, width) = scores.shape[:-2], scores.shape[-2:]
    flat = (rows * width + columns).ravel()
    out = np.take(scores.reshape(-1, height * width), flat, axis=1)
    return out.reshape(lead + columns.shape).astype(np.float32)  # a copy even when already float32
