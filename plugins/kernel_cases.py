"""The DisentangledAttention kernel's check matrix and what it is measured against, needing no GPU:
the cases, the torch and transformers-style references, relative error, and the byte floor.
``kernel_check`` runs them on a CUDA device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import reference

TOLERANCES = {"float32": 1e-6, "float16": 1e-2, "bfloat16": 1e-2}
SEQ_LENS = (1, 7, 63, 64, 65, 500, 512, 2048)
ROWS = (1, 12, 96)
SMAX = 2048
TABLES = {"linear": (0, 512), "log": (256, 512)}  # (position_buckets, max_relative_positions)
PRESENCE = {"both": (True, True), "c2p": (True, False), "p2c": (False, True)}
FULL_MATRIX_NUMEL = 2048 * 2048  # rows * Sq * Sk up to which every table/presence/dtype runs
NUMPY_NUMEL = 300_000  # cases up to this size are also checked against the NumPy oracle
TIMING_CONFIGS = ((96, 512), (48, 2048))  # (batch*heads, S), fp16, log buckets, span 256


def _torch():
    import torch

    return torch


# ---- cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    rows: int
    sq: int
    sk: int
    table: str
    presence: str
    dtype: str

    @property
    def span(self) -> int:
        """log: position_buckets (v2/v3); linear: min(S, max_relative_positions) as in v1."""
        buckets, max_rel = TABLES[self.table]
        return buckets if buckets > 0 else min(max(self.sq, self.sk), max_rel)

    @property
    def numel(self) -> int:
        return self.rows * self.sq * self.sk

    def name(self) -> str:
        shape = f"S={self.sq}" if self.sq == self.sk else f"Sq={self.sq},Sk={self.sk}"
        return f"{self.dtype} BH={self.rows} {shape} {self.table} {self.presence}"


def correctness_cases(quick: bool = False) -> list[Case]:
    """The case matrix, sized to run in well under a minute on an H100.

    Every table x presence x dtype combination for rows*S*S <= 2048^2; above that only both
    inputs for each dtype and table, plus fp16 single inputs (log) at S = 500/512, and one
    fp16 log case at 96 x 2048^2.
    """
    dtypes = tuple(TOLERANCES)
    cases: list[Case] = []
    seq_lens = (1, 7, 64, 65, 512, 2048) if quick else SEQ_LENS
    for s in seq_lens:
        for rows in ROWS:
            numel = rows * s * s
            if numel <= FULL_MATRIX_NUMEL:
                for dtype in dtypes:
                    for table in TABLES:
                        for presence in PRESENCE:
                            if quick and dtype != "float16" and presence != "both":
                                continue
                            cases.append(Case(rows, s, s, table, presence, dtype))
            elif s <= 512:
                for dtype in dtypes:
                    for table in TABLES:
                        cases.append(Case(rows, s, s, table, "both", dtype))
                if not quick:
                    cases += [Case(rows, s, s, "log", p, "float16") for p in ("c2p", "p2c")]
            elif rows <= 12:
                for dtype in dtypes if not quick else ("float16",):
                    for table in TABLES:
                        cases.append(Case(rows, s, s, table, "both", dtype))
            elif not quick:
                cases.append(Case(rows, s, s, "log", "both", "float16"))
    # Sq != Sk (the kernel's tiles are not square-only).
    for sq, sk in ((65, 33), (33, 65), (1, 100)):
        for dtype in ("float32", "float16"):
            cases.append(Case(3, sq, sk, "log", "both", dtype))
            cases.append(Case(3, sq, sk, "linear", "c2p", dtype))
    return cases


# ---- references ---------------------------------------------------------------------------------


def delta_tensor(rel_table, sq: int, sk: int, span: int):
    """delta[i, j] as a torch int64 tensor on rel_table's device (the spec's formula)."""
    torch = _torch()
    smax = (rel_table.numel() + 1) // 2
    if max(sq, sk) > smax:
        raise ValueError(f"sequence length {max(sq, sk)} exceeds the relative-position table ({smax})")
    device = rel_table.device
    r = torch.arange(sq, device=device)[:, None] - torch.arange(sk, device=device)[None, :]
    rel = rel_table.to(torch.int64)[r + smax - 1]
    return (rel + span).clamp_(0, 2 * span - 1)


def torch_reference(c2c, c2p, p2c, rel_table, pos_scale: float = 1.0, compute_dtype=None, max_chunk: int = 1 << 25):
    """The op with torch.gather in ``compute_dtype`` (default float64), on any device.

    Same order as the NumPy reference: ``c2c + pos_scale * (c2p_gathered + p2c_gathered)``.
    Works in chunks of leading rows to bound memory. Returns ``compute_dtype``.
    """
    torch = _torch()
    compute_dtype = compute_dtype or torch.float64
    pos_in = c2p if c2p is not None else p2c
    if pos_in is None:
        raise ValueError("DisentangledAttention needs at least one of c2p and p2c")
    span = pos_in.shape[-1] // 2
    sq, sk = c2c.shape[-2:]
    lead = tuple(c2c.shape[:-2])
    rows = math.prod(lead)
    delta = delta_tensor(rel_table.to(c2c.device), sq, sk, span)
    flat = {name: (t.reshape(rows, t.shape[-2], t.shape[-1]) if t is not None else None)
            for name, t in (("c2c", c2c), ("c2p", c2p), ("p2c", p2c))}
    out = torch.empty((rows, sq, sk), dtype=compute_dtype, device=c2c.device)
    step = max(1, max_chunk // max(1, sq * sk))
    for b0 in range(0, rows, step):
        b1 = min(rows, b0 + step)
        n = b1 - b0
        pos = torch.zeros((n, sq, sk), dtype=compute_dtype, device=c2c.device)
        if flat["c2p"] is not None:
            pos += torch.gather(flat["c2p"][b0:b1].to(compute_dtype), -1, delta.expand(n, sq, sk))
        if flat["p2c"] is not None:
            pos += torch.gather(flat["p2c"][b0:b1].to(compute_dtype), -1, delta.T.expand(n, sk, sq)).transpose(-1, -2)
        out[b0:b1] = flat["c2c"][b0:b1].to(compute_dtype) + pos_scale * pos
    return out.reshape(lead + (sq, sk))


def hf_relative_pos(rel_table, s: int):
    """transformers' ``relative_pos`` [1, S, S] (bucketed q - k), read from the table."""
    torch = _torch()
    smax = (rel_table.numel() + 1) // 2
    r = torch.arange(s, device=rel_table.device)[:, None] - torch.arange(s, device=rel_table.device)[None, :]
    return rel_table.to(torch.int64)[r + smax - 1].unsqueeze(0)


def hf_eager(c2c, c2p, p2c, relative_pos, span: int, pos_scale: float):
    """The transformers (DeBERTa v2/v3) eager gathers, in the I/O dtype, 3-D [B*H, S, *] as HF has them.

    ``score += gather(c2p, clamp(rel + span)) * s``; ``score += gather(p2c, clamp(-rel + span)).T * s``;
    ``c2c + score`` (HF divides by a scale; a multiply costs the same).
    """
    torch = _torch()
    score = 0
    if c2p is not None:
        c2p_pos = torch.clamp(relative_pos + span, 0, span * 2 - 1)
        c2p_att = torch.gather(c2p, dim=-1,
                               index=c2p_pos.squeeze(0).expand([c2p.size(0), c2p.size(1), relative_pos.size(-1)]))
        score = score + c2p_att * pos_scale
    if p2c is not None:
        p2c_pos = torch.clamp(-relative_pos + span, 0, span * 2 - 1)
        p2c_att = torch.gather(p2c, dim=-1,
                               index=p2c_pos.squeeze(0).expand([p2c.size(0), p2c.size(1), p2c.size(1)]))
        p2c_att = p2c_att.transpose(-1, -2)
        score = score + p2c_att * pos_scale
    return c2c + score


def relative_error(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64 (||out - ref|| when ref is all zero); NaN if out has any."""
    torch = _torch()
    out64 = out.to(torch.float64)
    ref64 = ref.to(torch.float64)
    diff = torch.linalg.vector_norm(out64 - ref64).item()
    norm = torch.linalg.vector_norm(ref64).item()
    return diff / norm if norm > 0 else diff


# ---- byte floor ---------------------------------------------------------------------------------


def used_positional_elements(rel_table: np.ndarray, sq: int, sk: int, span: int) -> tuple[int, int]:
    """Distinct elements one matrix reads: (c2p: sum over rows i of |{delta(i, j)}|,
    p2c: sum over rows j of |{delta(i, j)}|)."""
    delta = reference.delta_index(sq, sk, span, np.asarray(rel_table))
    by_row = np.sort(delta, axis=1)
    c2p = int(sq + np.count_nonzero(np.diff(by_row, axis=1)))
    by_col = np.sort(delta, axis=0)
    p2c = int(sk + np.count_nonzero(np.diff(by_col, axis=0)))
    return c2p, p2c


def byte_floor(rows: int, sq: int, sk: int, rel_table: np.ndarray, span: int, element_size: int,
               has_c2p: bool = True, has_p2c: bool = True) -> int:
    """Bytes the op must move: read c2c, write out, read the used part of c2p and p2c."""
    c2p, p2c = used_positional_elements(rel_table, sq, sk, span)
    elements = 2 * sq * sk + (c2p if has_c2p else 0) + (p2c if has_p2c else 0)
    return rows * elements * element_size


def _tables(torch, device):
    return {name: torch.from_numpy(reference.relative_position_table(b, m, SMAX)).to(device)
            for name, (b, m) in TABLES.items()}


def _inputs(torch, case: Case, device, generator):
    dtype = getattr(torch, case.dtype)
    has_c2p, has_p2c = PRESENCE[case.presence]
    width = 2 * case.span

    def rand(*shape):
        return (torch.randn(shape, generator=generator, device=device, dtype=torch.float32) * 2).to(dtype)

    c2c = rand(case.rows, case.sq, case.sk)
    c2p = rand(case.rows, case.sq, width) if has_c2p else None
    p2c = rand(case.rows, case.sk, width) if has_p2c else None
    return c2c, c2p, p2c
