"""The Triton kernel of DisentangledFlashAttention (forward) and its launcher.

One program computes one query tile (BLOCK_M rows) of one (batch, head), walking the key
tiles with an online softmax (fp32 max / sum / accumulator, exp2 with log2(e) folded into
the score factors). Per (query tile, key tile) the relative positions r = i - j form one
run of BLOCK_M + BLOCK_N - 1 consecutive values, r_lo = i0 - j0 - (BLOCK_N - 1) upwards;
element (a, c) of the tile (i = i0 + a, j = j0 + c) has r = r_lo + (a - c + BLOCK_N - 1).
So the positional terms are computed on that window, whatever the table holds:

* load the window's table strip t[w] = rel_table[r_lo + w + Smax - 1] (WINDOW int32s) and
  delta[w] = clamp(t[w] + P, 0, 2P - 1);
* constant tile (every valid delta[w] equal: tiles past the last bucket, for any table):
  c2p is one value per row, q'[i].pos_key[d], and p2c one per column, k[j].pos_query[d];
* otherwise gather the window's positional rows pos_key[delta[w]] (a [WINDOW, D] tile of
  whole rows) and compute c2p_win = q' . pos_key[delta]^T ([BLOCK_M, WINDOW]) and
  p2c_win = pos_query[delta] . k^T ([WINDOW, BLOCK_N]) with tl.dot; the tile's terms are
  their diagonals, c2p[a, c] = c2p_win[a, a - c + BLOCK_N - 1] and
  p2c[a, c] = p2c_win[a - c + BLOCK_N - 1, c], read with tl.gather.

No [S, 2P] buffer exists anywhere; monotone or not, any table is exact (the window holds
delta per r, not per distinct value). Masked keys get finfo(dtype).min as transformers
writes it; columns past S get -inf; a fully padded row therefore averages its keys, finite.

Runs compiled on sm_80+ and on the CPU through Triton's interpreter (TRITON_INTERPRET=1,
set before this module is imported; CPU torch tensors; fp32/fp16 only there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from debertrt.core.errors import DebertrtError

from ..spec import FLASH_MAX_HEAD_DIM
from .reference import masked_score, op_dims

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch shape. ``window`` slots hold the BLOCK_M + BLOCK_N - 1 relative positions."""

    block_m: int = 32
    block_n: int = 32
    num_warps: int = 8
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise DebertrtError(f"KernelConfig.{name} must be a power of two >= 16 (tl.dot), got {value}")

    @property
    def window(self) -> int:
        return triton.next_power_of_2(self.block_m + self.block_n - 1)


# The launch shape, chosen from compiled resource use (``python -m debertrt.plugins.flash.aot``):
# the largest tiles with no register spills on sm_90 for head dims 32/64/128 (64 x 64 tiles
# spill: the window tiles and their gathers). Not yet tuned by GPU timings;
# ``scripts/bench_attention.py --config`` times others.
DEFAULT_CONFIG = KernelConfig(32, 32, num_warps=8, num_stages=2)


@triton.jit
def _flash_fwd(Q, K, V, PK, PQ, MASK, TABLE,
               sqb, sqh, sqs, sqd, skb, skh, sks, skd, svb, svh, svs, svd,
               spkh, spkr, spkd, spqh, spqr, spqd, smb, sms, sob, sos, sod,
               H, S, D, P, SMAX, M_TILES,
               c2c_factor, c2p_factor, p2c_factor, OUT,
               MASKED: tl.constexpr, HAS_C2P: tl.constexpr, HAS_P2C: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr,
               PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    m_tile = pid % M_TILES
    bh = pid // M_TILES
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    i0 = m_tile * BLOCK_M
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    slots = tl.arange(0, WINDOW)
    dim_ok = dims < D
    row_ok = (i0 + rows) < S
    q = tl.load(Q + b * sqb + h * sqh + (i0 + rows)[:, None] * sqs + dims[None, :] * sqd,
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    # the window slot of tile element (a, c); slot w holds r = r_lo + w
    diag = rows[:, None] - cols[None, :] + (BLOCK_N - 1)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j0 in range(0, S, BLOCK_N):
        col_ok = (j0 + cols) < S
        kv_mask = col_ok[:, None] & dim_ok[None, :]
        k = tl.load(K + b * skb + h * skh + (j0 + cols)[:, None] * sks + dims[None, :] * skd, mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + (j0 + cols)[:, None] * svs + dims[None, :] * svd, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * c2c_factor
        r_lo = i0 - j0 - (BLOCK_N - 1)
        r = r_lo + slots
        slot_ok = (slots < BLOCK_M + BLOCK_N - 1) & (r > -S) & (r < S)
        t = tl.load(TABLE + (r + SMAX - 1), mask=slot_ok, other=0)
        delta = tl.minimum(tl.maximum(t + P, 0), 2 * P - 1)
        d_lo = tl.min(tl.where(slot_ok, delta, 2 * P), axis=0)
        d_hi = tl.max(tl.where(slot_ok, delta, -1), axis=0)
        if d_lo == d_hi:
            if HAS_C2P:
                pk = tl.load(PK + h * spkh + d_lo * spkr + dims * spkd, mask=dim_ok, other=0.0).to(tl.float32)
                s += c2p_factor * tl.sum(q.to(tl.float32) * pk[None, :], axis=1)[:, None]
            if HAS_P2C:
                pq = tl.load(PQ + h * spqh + d_lo * spqr + dims * spqd, mask=dim_ok, other=0.0).to(tl.float32)
                s += p2c_factor * tl.sum(k.to(tl.float32) * pq[None, :], axis=1)[None, :]
        else:
            win_mask = slot_ok[:, None] & dim_ok[None, :]
            if HAS_C2P:
                pk_win = tl.load(PK + h * spkh + delta[:, None] * spkr + dims[None, :] * spkd, mask=win_mask, other=0.0)
                c2p_win = tl.dot(q, tl.trans(pk_win), input_precision=PRECISION)
                s += c2p_factor * tl.gather(c2p_win, diag, axis=1)
            if HAS_P2C:
                pq_win = tl.load(PQ + h * spqh + delta[:, None] * spqr + dims[None, :] * spqd, mask=win_mask, other=0.0)
                p2c_win = tl.dot(pq_win, tl.trans(k), input_precision=PRECISION)
                s += p2c_factor * tl.gather(p2c_win, diag, axis=0)
        key_real = tl.load(MASK + b * smb + (j0 + cols) * sms, mask=col_ok, other=0) != 0
        s = tl.where(key_real[None, :], s, MASKED)
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(OUT + b * sob + (i0 + rows)[:, None] * sos + (h * D + dims)[None, :] * sod,
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def flash_attention(q, k, v, pos_key, pos_query, mask, rel_table, q_scale: float, k_scale: float, pos_scale: float,
                    config: KernelConfig | None = None) -> torch.Tensor:
    """Context ``[B, S, H*D]`` (q's dtype) through the Triton kernel; tensors on one device, any strides."""
    dims = op_dims(q, k, v, pos_key, pos_query, mask, rel_table)
    if dims.head_dim > FLASH_MAX_HEAD_DIM:
        raise DebertrtError(f"the DisentangledFlashAttention kernel takes head dims up to {FLASH_MAX_HEAD_DIM}, "
                            f"got {dims.head_dim}: use the reference")
    devices = {t.device for t in (q, k, v, pos_key, pos_query, mask, rel_table) if t is not None}
    if len(devices) != 1:
        raise DebertrtError(f"DisentangledFlashAttention inputs are on {sorted(map(str, devices))}: move them to one device")
    config = config or DEFAULT_CONFIG
    batch, heads, seq, head_dim = dims.batch, dims.heads, dims.seq, dims.head_dim
    out = torch.empty((batch, seq, heads * head_dim), dtype=q.dtype, device=q.device)
    m_tiles = triton.cdiv(seq, config.block_m)
    zeros = (0, 0, 0)  # strides of an absent positional input (its pointer is None, its branch compiled out)
    _flash_fwd[(batch * heads * m_tiles,)](
        q, k, v, pos_key, pos_query, mask, rel_table.contiguous(),
        *q.stride(), *k.stride(), *v.stride(),
        *(pos_key.stride() if pos_key is not None else zeros), *(pos_query.stride() if pos_query is not None else zeros),
        *mask.stride(), out.stride(0), out.stride(1), out.stride(2),
        heads, seq, head_dim, dims.span, dims.smax, m_tiles,
        q_scale * k_scale * LOG2E, q_scale * pos_scale * LOG2E, pos_scale * LOG2E, out,
        MASKED=masked_score(q.dtype), HAS_C2P=pos_key is not None, HAS_P2C=pos_query is not None,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        WINDOW=config.window, PRECISION="ieee" if dims.dtype == "float32" else "tf32",
        num_warps=config.num_warps, num_stages=config.num_stages)
    return out

