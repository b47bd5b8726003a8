"""The DisentangledAttention CUDA kernel's tiling, emulated in NumPy (the .cu's index arithmetic,
lane by lane): every output is written exactly once and equals the reference bit for bit. CPU only.
"""

from __future__ import annotations

import numpy as np
import pytest

from debertrt.plugins import reference

WARP, TILE, WARPS = 32, 64, 8  # kWarpSize, kTile, kWarps of disentangled_attention_kernel.cu
HALVES = TILE // WARP
STEPS_PER_HALF = TILE + WARP - 1
ROWS_PER_BATCH = 4


def emulate_kernel(c2c, c2p, p2c, rel_table, pos_scale):
    """The kernel's index arithmetic block by block, all lanes of a warp at once (float32 math).

    Mirrors disentangledAttentionKernel: block x -> (query tile, r tile); lane -> columns
    rr = lane and lane + 32; delta(r) with both clamps; p2c staged step by step (half h of
    diagonal c = ii - rr) into tile[ii][rr]; rows ii = warp + 8k in batches of 4.
    Returns (out, writes): writes counts how often each output was stored.
    """
    rows, sq, sk = c2c.shape
    width = (c2p if c2p is not None else p2c).shape[-1]
    span = width // 2
    n = len(rel_table)
    n_i_tiles = -(-sq // TILE)
    n_r_tiles = -(-(sk + TILE - 1) // TILE)
    steps = HALVES * STEPS_PER_HALF
    out = np.full(c2c.shape, np.nan, dtype=np.float32)
    writes = np.zeros(c2c.shape, dtype=np.int64)
    lane = np.arange(WARP)

    def delta_of(r):
        idx = np.clip(r.astype(np.int64) + (n + 1) // 2 - 1, 0, n - 1)
        return np.clip(rel_table[idx].astype(np.int64) + span, 0, width - 1)

    for block in range(n_i_tiles * n_r_tiles):
        i_tile, r_tile = divmod(block, n_r_tiles)
        i0 = i_tile * TILE
        r_base = i0 - (sk - 1) + r_tile * TILE
        r_h = [r_base + lane + h * WARP for h in range(HALVES)]
        delta_h = [delta_of(r) for r in r_h]
        for b in range(rows):
            tile = np.full((TILE, TILE), np.nan, dtype=np.float32)
            staged = np.zeros((TILE, TILE), dtype=bool)
            if p2c is not None:
                for warp in range(WARPS):
                    for m in range(-(-steps // WARPS)):
                        step = warp + m * WARPS
                        h = 1 if step >= STEPS_PER_HALF else 0
                        c = step - (WARP - 1) if h == 0 else step - STEPS_PER_HALF - (TILE - 1)
                        j = i0 + c - r_base
                        if step >= steps or j < 0 or j >= sk:
                            continue
                        rr = lane + h * WARP
                        ii = rr + c
                        ok = (ii >= 0) & (ii < TILE) & (i0 + ii < sq)
                        assert not staged[ii[ok], rr[ok]].any(), "a tile slot staged twice"
                        tile[ii[ok], rr[ok]] = p2c[b, j, delta_h[h][ok]]
                        staged[ii[ok], rr[ok]] = True
            for warp in range(WARPS):
                for k in range(TILE // WARPS):
                    ii = warp + k * WARPS
                    i = i0 + ii
                    for h in range(HALVES):
                        j = i - r_h[h]
                        ok = (i < sq) & (j >= 0) & (j < sk)
                        if not ok.any():
                            continue
                        pos = np.zeros(int(ok.sum()), dtype=np.float32)
                        if c2p is not None:
                            pos = pos + c2p[b, i, delta_h[h][ok]]
                        if p2c is not None:
                            cols = lane[ok] + h * WARP
                            assert staged[ii, cols].all(), "read a p2c slot that was not staged"
                            pos = pos + tile[ii, cols]
                        out[b, i, j[ok]] = c2c[b, i, j[ok]] + np.float32(pos_scale) * pos
                        writes[b, i, j[ok]] += 1
    return out, writes


@pytest.mark.parametrize("presence", ["both", "c2p", "p2c"])
@pytest.mark.parametrize("sq,sk,span,table", [(1, 1, 1, "linear"), (7, 7, 4, "log"), (33, 65, 16, "linear"),
                                               (65, 33, 40, "log"), (64, 64, 256, "log"), (100, 37, 8, "random"),
                                               (130, 200, 64, "log")])
def test_kernel_tiling_emulation_matches_reference(presence, sq, sk, span, table):
    rng = np.random.default_rng(sq * 1000 + sk)
    smax = max(sq, sk) + 3
    if table == "random":  # non-monotone, out-of-range values: exercises both clamps
        rel_table = rng.integers(-3 * span, 3 * span + 1, size=2 * smax - 1).astype(np.int32)
    else:
        rel_table = reference.relative_position_table(*((0, 512) if table == "linear" else (8, 64)), smax)
    rows = 2
    c2c = rng.standard_normal((rows, sq, sk), dtype=np.float32)
    c2p = rng.standard_normal((rows, sq, 2 * span), dtype=np.float32) if presence != "p2c" else None
    p2c = rng.standard_normal((rows, sk, 2 * span), dtype=np.float32) if presence != "c2p" else None
    out, writes = emulate_kernel(c2c, c2p, p2c, rel_table, 0.37)
    assert (writes == 1).all(), "every output written exactly once"
    expected = reference.disentangled_attention(c2c, c2p, p2c, rel_table, 0.37)
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))
