"""``debertrt::disentangled_flash_attention``: the fused op as a torch.library custom op.

CUDA tensors run the Triton kernel (``kernel.flash_attention``); every other device runs the
plain-torch reference (``torch_reference.flash_attention``). The fake implementation gives
torch.compile / export the output's shape and dtype without running anything. Importing
this module registers the op (once per process, as torch.library requires).
"""

from __future__ import annotations

import torch

from . import torch_reference


@torch.library.custom_op("debertrt::disentangled_flash_attention", mutates_args=())
def disentangled_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos_key: torch.Tensor | None,
                                 pos_query: torch.Tensor | None, mask: torch.Tensor, rel_table: torch.Tensor,
                                 q_scale: float, k_scale: float, pos_scale: float) -> torch.Tensor:
    """Context ``[B, S, H*D]`` of one DeBERTa attention layer; see ``debertrt.plugins.spec``."""
    return torch_reference.flash_attention(q, k, v, pos_key, pos_query, mask, rel_table, q_scale, k_scale, pos_scale)


@disentangled_flash_attention.register_kernel("cuda")
def _cuda(q, k, v, pos_key, pos_query, mask, rel_table, q_scale, k_scale, pos_scale):
    from .kernel import flash_attention

    return flash_attention(q, k, v, pos_key, pos_query, mask, rel_table, q_scale, k_scale, pos_scale)


@disentangled_flash_attention.register_fake
def _fake(q, k, v, pos_key, pos_query, mask, rel_table, q_scale, k_scale, pos_scale):
    batch, heads, seq, head_dim = q.shape
    return q.new_empty((batch, seq, heads * head_dim))
