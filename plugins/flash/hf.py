"""transformers DeBERTa attention modules through DisentangledFlashAttention.

* :func:`layer_facts` reads what the op needs from one attention module (v1
  ``modeling_deberta.DisentangledSelfAttention``, v2/v3
  ``modeling_deberta_v2.DisentangledSelfAttention``): scale factors exactly as that version
  applies them, which positional terms it has, its relative-position table.
* :func:`op_inputs` projects q, k, v and the relative-position keys/queries with the module's
  own weights, exactly as transformers does in its forward.
* :func:`patched` is a context manager under which a model's attention modules run through
  the op (``debertrt::disentangled_flash_attention``, or a chosen backend).

transformers facts this relies on (5.x): v1 pre-divides q by sqrt(d * (1 + len(pos_att_type)))
and uses the positional query divided the same way, slicing the relative embeddings
[max_rel - span, max_rel + span) with span = min(S, max_rel); with the full table (P = max_rel)
clamp(r + P, 0, 2P - 1) selects the same rows for every S. v2/v3 divide k, c2p and p2c by
sqrt(d * (1 + #c2p + #p2c)) and use 2 * (position_buckets or max_relative_positions) rows.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass

import numpy as np
import torch

from debertrt.core.errors import DebertrtError

from .. import reference as gather_reference


@dataclass(frozen=True)
class LayerFacts:
    version: str            # "v1" or "v2" (v2 covers v3: log buckets are a table, not a version)
    heads: int
    head_dim: int
    q_scale: float
    k_scale: float
    pos_scale: float
    has_c2p: bool
    has_p2c: bool
    position_buckets: int   # 0: linear relative positions
    max_relative_positions: int
    span: int               # P of the positional inputs

    def rel_table(self, max_len: int) -> np.ndarray:
        return gather_reference.relative_position_table(self.position_buckets, self.max_relative_positions, max_len)

    def scales(self) -> dict:
        return {"q_scale": self.q_scale, "k_scale": self.k_scale, "pos_scale": self.pos_scale}


def _hf_scale(head_dim: int, scale_factor: int) -> float:
    """transformers' ``scaled_size_sqrt``: sqrt in float32."""
    return float(torch.sqrt(torch.tensor(head_dim, dtype=torch.float) * scale_factor))


def is_v1(module) -> bool:
    return hasattr(module, "in_proj")


def layer_facts(module) -> LayerFacts:
    """What the op needs from one DeBERTa ``DisentangledSelfAttention`` module (v1 or v2/v3)."""
    kinds = list(module.pos_att_type or [])
    has_c2p, has_p2c = "c2p" in kinds, "p2c" in kinds
    if not getattr(module, "relative_attention", False) or not (has_c2p or has_p2c):
        raise DebertrtError("this DeBERTa attention has no relative attention (relative_attention and pos_att_type "
                            "c2p/p2c): it has nothing for DisentangledFlashAttention to fuse")
    heads = module.num_attention_heads
    head_dim = module.attention_head_size
    max_rel = int(module.max_relative_positions)
    if is_v1(module):
        if getattr(module, "head_logits_proj", None) is not None:
            raise DebertrtError("DeBERTa v1 talking_head mixes heads' scores and cannot be fused: run it unpatched")
        scale = _hf_scale(head_dim, 1 + len(kinds))
        return LayerFacts("v1", heads, head_dim, 1.0 / scale, 1.0, 1.0, has_c2p, has_p2c, 0, max_rel, max_rel)
    scale = _hf_scale(head_dim, 1 + has_c2p + has_p2c)
    buckets = int(module.position_buckets) if module.position_buckets > 0 else 0
    return LayerFacts("v2", heads, head_dim, 1.0, 1.0 / scale, 1.0 / scale, has_c2p, has_p2c, buckets, max_rel,
                      int(module.pos_ebd_size))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, S, H*D] -> [B, H, S, D] (a view)."""
    return x.view(x.shape[0], x.shape[1], heads, -1).permute(0, 2, 1, 3)


def _pos_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[2P, H*D] -> [H, 2P, D] (a view)."""
    return x.view(x.shape[0], heads, -1).permute(1, 0, 2)


def op_inputs(module, hidden_states: torch.Tensor, rel_embeddings: torch.Tensor, facts: LayerFacts | None = None) -> dict:
    """q, k, v ([B, H, S, D]) and pos_key / pos_query ([H, 2P, D] or None) as the module computes them."""
    facts = facts or layer_facts(module)
    h = facts.heads
    if is_v1(module):
        qkv = _heads(module.in_proj(hidden_states), h)
        q, k, v = qkv.chunk(3, dim=-1)
        q = q + module.q_bias.view(h, 1, -1)
        v = v + module.v_bias.view(h, 1, -1)
        pos_key = _pos_heads(module.pos_proj(rel_embeddings), h) if facts.has_c2p else None
        pos_query = None
        if facts.has_p2c:
            scale = _hf_scale(facts.head_dim, 1 + len(module.pos_att_type))
            pos_query = _pos_heads(module.pos_q_proj(rel_embeddings), h) / scale
        return {"q": q, "k": k, "v": v, "pos_key": pos_key, "pos_query": pos_query}
    rel = rel_embeddings[: 2 * facts.span]
    q = _heads(module.query_proj(hidden_states), h)
    k = _heads(module.key_proj(hidden_states), h)
    v = _heads(module.value_proj(hidden_states), h)
    if module.share_att_key:
        pos_key_proj, pos_query_proj = module.key_proj, module.query_proj
    else:
        pos_key_proj, pos_query_proj = getattr(module, "pos_key_proj", None), getattr(module, "pos_query_proj", None)
    pos_key = _pos_heads(pos_key_proj(rel), h) if facts.has_c2p else None
    pos_query = _pos_heads(pos_query_proj(rel), h) if facts.has_p2c else None
    return {"q": q, "k": k, "v": v, "pos_key": pos_key, "pos_query": pos_query}


def key_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """The [B, S] int32 key mask behind transformers' extended mask (mask_i * mask_j).

    Raises when the extended mask is not of that form (a custom [B, S, S] mask cannot be fused).
    """
    if attention_mask.dim() == 2:
        return (attention_mask != 0).to(torch.int32)
    extended = attention_mask.reshape(attention_mask.shape[0], attention_mask.shape[-2], attention_mask.shape[-1])
    if attention_mask.dim() != 4 or attention_mask.shape[1] != 1 or extended.shape[-1] != extended.shape[-2]:
        raise DebertrtError(f"cannot fuse attention with a mask of shape {tuple(attention_mask.shape)}: pass a "
                            "[batch, seq] padding mask")
    keep = torch.diagonal(extended, dim1=-2, dim2=-1) != 0
    if not torch.equal(extended != 0, keep[:, :, None] & keep[:, None, :]):
        raise DebertrtError("the attention mask is not a padding mask (mask_i * mask_j): DisentangledFlashAttention "
                            "masks keys only; run this model unpatched")
    return keep.to(torch.int32)


BACKENDS = ("op", "triton", "reference")


def _backend(name: str):
    if name == "op":
        from .op import disentangled_flash_attention

        return disentangled_flash_attention
    if name == "triton":
        from .kernel import flash_attention

        return flash_attention
    if name == "reference":
        from .torch_reference import flash_attention

        return flash_attention
    raise DebertrtError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")


def attention_modules(model) -> list:
    """The model's DeBERTa ``DisentangledSelfAttention`` modules (v1 and v2/v3)."""
    from transformers.models.deberta.modeling_deberta import DisentangledSelfAttention as V1
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention as V2

    return [m for m in model.modules() if isinstance(m, (V1, V2))]


@contextlib.contextmanager
def patched(model, backend: str = "op"):
    """Run ``model``'s attention through DisentangledFlashAttention inside the ``with`` block.

    Inference only (``model.eval()``); calls that ask for attention probabilities or pass
    ``query_states`` (the enhanced mask decoder) run transformers' own forward. The
    relative positions come from the config's table (what transformers' encoder builds; a
    ``relative_pos`` argument is not read). The original forwards come back on exit, also
    after an exception.
    """
    attention = _backend(backend)
    modules = attention_modules(model)
    if not modules:
        raise DebertrtError(f"{type(model).__name__} has no DeBERTa attention modules to patch")
    if model.training:
        raise DebertrtError("DisentangledFlashAttention is forward-only: call model.eval() before patching")
    facts = [layer_facts(m) for m in modules]
    tables: dict = {}

    def table_for(f: LayerFacts, seq: int, device) -> torch.Tensor:
        key = (f.position_buckets, f.max_relative_positions, seq, str(device))
        if key not in tables:
            tables[key] = torch.from_numpy(f.rel_table(seq)).to(device)
        return tables[key]

    def make_forward(module, f: LayerFacts, original):
        def forward(self, hidden_states, attention_mask, output_attentions=False, query_states=None,
                    relative_pos=None, rel_embeddings=None):
            if output_attentions or query_states is not None or rel_embeddings is None:
                return original(hidden_states, attention_mask, output_attentions, query_states=query_states,
                                relative_pos=relative_pos, rel_embeddings=rel_embeddings)
            inputs = op_inputs(self, hidden_states, rel_embeddings, f)
            context = attention(inputs["q"], inputs["k"], inputs["v"], inputs["pos_key"], inputs["pos_query"],
                                key_mask(attention_mask), table_for(f, hidden_states.shape[1], hidden_states.device),
                                f.q_scale, f.k_scale, f.pos_scale)
            return context, None

        return types.MethodType(forward, module)

    saved = [(m, m.__dict__.get("forward")) for m in modules]
    try:
        for m, f in zip(modules, facts):
            m.forward = make_forward(m, f, m.forward)
        yield model
    finally:
        for m, own in saved:
            if own is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = own
