"""DisentangledFlashAttention in plain torch tensor ops, on any device.

The CPU implementation of the ``debertrt::disentangled_flash_attention`` op and the reference
the Triton kernel is compared with on a GPU. Same arithmetic as the NumPy oracle
(``reference.flash_attention``): scores, gathers and softmax in ``compute_dtype`` (float32 by
default), the result cast to q's dtype. It materialises [B, H, S, S] scores: a reference, not
a fast path.
"""

from __future__ import annotations

import torch

from .reference import masked_score, op_dims


def delta_index(rel_table: torch.Tensor, seq: int, span: int) -> torch.Tensor:
    """delta[i, j] = clamp(rel_table[i - j + Smax - 1] + P, 0, 2P - 1) as int64 on rel_table's device."""
    smax = (rel_table.numel() + 1) // 2
    positions = torch.arange(seq, device=rel_table.device)
    rel = positions[:, None] - positions[None, :]
    return (rel_table.to(torch.int64)[rel + smax - 1] + span).clamp_(0, 2 * span - 1)


def flash_attention(q, k, v, pos_key, pos_query, mask, rel_table, q_scale: float, k_scale: float,
                    pos_scale: float, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Context ``[B, S, H*D]`` in q's dtype."""
    dims = op_dims(q, k, v, pos_key, pos_query, mask, rel_table)
    batch, heads, seq, head_dim = dims.batch, dims.heads, dims.seq, dims.head_dim
    qs = q.to(compute_dtype) * q_scale
    kc = k.to(compute_dtype)
    scores = (qs @ kc.transpose(-1, -2)) * k_scale
    delta = delta_index(rel_table.to(q.device), seq, dims.span)
    positional = torch.zeros_like(scores)
    if pos_key is not None:
        c2p = qs @ pos_key.to(compute_dtype).transpose(-1, -2)                    # [B, H, S, 2P]
        positional += torch.gather(c2p, -1, delta.expand(batch, heads, seq, seq))
    if pos_query is not None:
        p2c = kc @ pos_query.to(compute_dtype).transpose(-1, -2)                  # [B, H, S(j), 2P]
        positional += torch.gather(p2c, -1, delta.T.expand(batch, heads, seq, seq)).transpose(-1, -2)
    scores = scores + pos_scale * positional
    keep = (mask != 0)[:, None, None, :]
    scores = scores.masked_fill(~keep, masked_score(q.dtype))
    context = torch.softmax(scores, dim=-1) @ v.to(compute_dtype)
    return context.permute(0, 2, 1, 3).reshape(batch, seq, heads * head_dim).to(q.dtype)
