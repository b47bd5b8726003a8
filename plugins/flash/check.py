"""Correctness matrices of the DisentangledFlashAttention Triton kernel.

* ``interpret``: CPU, Triton's interpreter, vs the NumPy oracle. S in {1, 17, 64, 65, 130}
  x c2p-only / p2c-only / both x v1 / v2 / v3 tables x float32 / float16; each case's batch
  holds two of right-padded, left-padded and all-padding rows, in turn; heads alternate
  1 / 2 and head dims 16 / 32; tiles of 16 to 64, so tile edges, ragged tiles, window tiles
  and constant (past-the-last-bucket) tiles all occur. Extra cases: other tile shapes, head dims that
  are not powers of two, and tables that are not monotone or jump by more than one.
* ``gpu``: CUDA, vs the plain-torch reference in float32, float16 / bfloat16 at
  S in {1, 63, 64, 65, 500, 512, 2048}, the same padding kinds, head dim 64.
* ``launcher``: CUDA, the ahead-of-time cubins through their C launcher (``libdebertrt_flash.so``,
  what the TensorRT plugin links; ``--library``) vs the same reference: float16 / bfloat16,
  S in {1, 64, 65, 512}, every presence, v1 and v3 tables, padding, head dims 32 / 48 / 64 / 128.

Tolerances (max |out - reference| over non-padding rows; every row finite) are the spec's
``DISENTANGLED_FLASH_ATTENTION.tolerances``; the reference runs on the same input values in
float32, so its result is not itself rounded to fp16/bf16. ``python -m debertrt.plugins.flash.check
{interpret,gpu}`` prints a table, writes JSON with ``--json``, exits 0 pass / 1 fail /
2 cannot run here. ``interpret`` sets TRITON_INTERPRET=1 itself and must run in a process
that has not imported triton yet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..spec import DISENTANGLED_FLASH_ATTENTION as SPEC
from . import reference

PRESENCE = {"both": (True, True), "c2p": (True, False), "p2c": (False, True)}
# table name -> (position_buckets, max_relative_positions, P). Interpreter tables are small enough
# that S = 130 reaches past the last bucket: v1 uses the full table (P = max_rel), v2 is linear
# with P = max_rel, v3 has log buckets with max_rel != 2 * buckets. GPU tables are the real
# models' (v1 base: max_rel 512; v3 base: 256 buckets, max_rel 512). "jumpy" (log buckets
# jumping by several slots per position) and "random" (not monotone) are tables no model has,
# for the kernel's generality.
TABLE_KINDS = {"v1": (0, 24, 24), "v2": (0, 40, 40), "v3": (16, 64, 16),
               "v1-base": (0, 512, 512), "v3-base": (256, 512, 256),
               "jumpy": (32, 20, 32), "random": (-1, -1, 12)}
INTERPRET_TABLES = ("v1", "v2", "v3")
GPU_TABLES = ("v1-base", "v3-base")
SCALES = {"q_scale": 0.8, "k_scale": 0.25, "pos_scale": 0.2}
PADDING = ("right", "left", "all-pad")
INTERPRET_SEQS = (1, 17, 64, 65, 130)
GPU_SEQS = (1, 63, 64, 65, 500, 512, 2048)


@dataclass(frozen=True)
class Case:
    seq: int
    heads: int
    head_dim: int
    presence: str
    table: str
    dtype: str
    padding: tuple = PADDING
    block_m: int | None = None  # None: the kernel's default launch shape
    block_n: int | None = None

    def name(self) -> str:
        tiles = f"{self.block_m}x{self.block_n}" if self.block_m else "default"
        return f"{self.dtype} S={self.seq} H={self.heads} D={self.head_dim} {self.table} {self.presence} tiles={tiles}"


def padding_mask(kinds, seq: int, rng: np.random.Generator) -> np.ndarray:
    """int32 [len(kinds), seq]: 'full', 'right' (real tokens first), 'left' (padding first), 'all-pad'."""
    mask = np.zeros((len(kinds), seq), dtype=np.int32)
    for row, kind in enumerate(kinds):
        length = int(rng.integers(1, seq + 1)) if seq > 1 else 1
        if kind == "full":
            mask[row] = 1
        elif kind == "right":
            mask[row, :length] = 1
        elif kind == "left":
            mask[row, seq - length:] = 1
        elif kind != "all-pad":
            raise ValueError(f"unknown padding kind {kind!r}")
    return mask


def rel_table(table: str, smax: int, rng: np.random.Generator) -> np.ndarray:
    """The int32 table of a named kind, covering relative positions (-smax, smax)."""
    buckets, max_rel, span = TABLE_KINDS[table]
    if table == "random":
        return rng.integers(-span - 3, span + 4, size=2 * smax - 1).astype(np.int32)
    return reference.gather_reference.relative_position_table(buckets, max_rel, smax)


def case_inputs(case: Case, rng: np.random.Generator, smax: int | None = None) -> dict:
    """Random inputs of one case as NumPy arrays (float32 draws rounded to the case's dtype if numpy has it)."""
    has_c2p, has_p2c = PRESENCE[case.presence]
    batch = len(case.padding)
    span = TABLE_KINDS[case.table][2]
    dtype = np.float32 if case.dtype == "bfloat16" else np.dtype(case.dtype)

    def draw(*shape):
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)

    shape = (batch, case.heads, case.seq, case.head_dim)
    return {"q": draw(*shape), "k": draw(*shape), "v": draw(*shape),
            "pos_key": draw(case.heads, 2 * span, case.head_dim) if has_c2p else None,
            "pos_query": draw(case.heads, 2 * span, case.head_dim) if has_p2c else None,
            "mask": padding_mask(case.padding, case.seq, rng),
            "rel_table": rel_table(case.table, smax or case.seq + 3, rng)}


# Interpreter tiles per S: every S > 1 spans several tiles (ragged except 64), S = 130 reaches
# constant tiles for every table; the interpreter costs ~20 ms per tile whatever its size.
INTERPRET_TILES = {1: (16, 16), 17: (16, 16), 64: (32, 32), 65: (64, 64), 130: (64, 64)}


# Interpreter batches: two rows per case, the three padding kinds in turn.
INTERPRET_PADDING = (("right", "left"), ("left", "all-pad"), ("all-pad", "right"))


def tile_kinds(case: Case, table: np.ndarray) -> dict:
    """How many (query tile, key tile) pairs of one (batch, head) take the kernel's window path
    and how many its constant path (every delta of the tile's window equal), for coverage claims."""
    span, smax = TABLE_KINDS[case.table][2], (len(table) + 1) // 2
    counts = {"window": 0, "constant": 0}
    for i0 in range(0, case.seq, case.block_m):
        for j0 in range(0, case.seq, case.block_n):
            r = i0 - j0 - (case.block_n - 1) + np.arange(case.block_m + case.block_n - 1)
            r = r[np.abs(r) < case.seq]
            delta = np.clip(table[r + smax - 1] + span, 0, 2 * span - 1)
            counts["constant" if delta.min() == delta.max() else "window"] += 1
    return counts


def as_float32(inputs: dict) -> dict:
    """The same input values with float arrays/tensors in float32 (exact), so a reference's result is not rounded."""
    out = {}
    for name, a in inputs.items():
        if a is None or name in ("mask", "rel_table"):
            out[name] = a
        else:
            out[name] = a.astype(np.float32) if isinstance(a, np.ndarray) else a.float()
    return out


def interpret_cases() -> list[Case]:
    cases = []
    for seq in INTERPRET_SEQS:
        for table in INTERPRET_TABLES:
            for presence in PRESENCE:
                for dtype in ("float32", "float16"):
                    n = len(cases)
                    cases.append(Case(seq, 1 + n % 2, (16, 32)[(n // 2) % 2], presence, table, dtype,
                                      padding=INTERPRET_PADDING[n % 3], block_m=INTERPRET_TILES[seq][0],
                                      block_n=INTERPRET_TILES[seq][1]))
    cases += [Case(65, 2, 16, "both", "v3", "float32", block_m=16, block_n=16),
              Case(130, 1, 16, "both", "v1", "float16", block_m=32, block_n=16),
              Case(65, 1, 16, "both", "v2", "float32", block_m=16, block_n=32),
              Case(40, 2, 8, "c2p", "v2", "float32", block_m=16, block_n=16),
              Case(33, 1, 24, "p2c", "v3", "float16", block_m=16, block_n=16),
              Case(100, 2, 16, "both", "jumpy", "float32", block_m=32, block_n=32),
              Case(70, 1, 16, "both", "random", "float32", block_m=32, block_n=32),
              Case(50, 2, 16, "both", "v3", "float16")]  # the default launch shape
    return cases


def gpu_cases() -> list[Case]:
    cases = []
    for seq in GPU_SEQS:
        for dtype in ("float16", "bfloat16"):
            for table in GPU_TABLES:
                presences = PRESENCE if seq <= 512 else ("both",)
                for presence in presences:
                    cases.append(Case(seq, 2, 64, presence, table, dtype, padding=("full",) + PADDING))
    cases += [Case(512, 4, d, "both", "v3-base", "float16", padding=("full",) + PADDING) for d in (32, 128)]
    cases.append(Case(512, 2, 64, "both", "v3-base", "float32", padding=("full",) + PADDING))
    return cases


@dataclass
class Result:
    case: str
    dtype: str
    error: float
    tolerance: float
    nonfinite: int
    passed: bool
    seconds: float
    exception: str | None = None


def judge(case: Case, got: np.ndarray, expected: np.ndarray, mask: np.ndarray, seconds: float) -> Result:
    """The spec's error over non-padding query rows; any NaN/Inf anywhere fails."""
    got = np.asarray(got, dtype=np.float32)
    real = mask != 0
    nonfinite = int((~np.isfinite(got)).sum())
    err = max_error(got[real], np.asarray(expected, np.float32)[real]) if real.any() else 0.0
    tol = SPEC.tolerances[case.dtype]
    return Result(case.name(), case.dtype, err, tol, nonfinite, nonfinite == 0 and err <= tol, round(seconds, 3))


def max_error(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected| / max(1, |expected|): absolute up to 1, relative above (an fp16 output's rounding)."""
    return float((np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max())


def run_interpret(cases=None, launch=None, stop_on_failure: bool = False, log=print) -> list[Result]:
    """Each case through the kernel on CPU tensors (interpreter) vs the NumPy oracle."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("run_interpret needs TRITON_INTERPRET=1 set before triton is imported")
    import torch

    if launch is None:
        from .kernel import flash_attention as launch
    from .kernel import KernelConfig

    results = []
    for index, case in enumerate(cases or interpret_cases()):
        inputs = case_inputs(case, np.random.default_rng(index))
        expected = reference.flash_attention(**as_float32(inputs), **SCALES)
        tensors = {k: None if a is None else torch.from_numpy(a) for k, a in inputs.items()}
        t0 = time.perf_counter()
        config = KernelConfig(case.block_m, case.block_n) if case.block_m else None
        got = launch(**tensors, **SCALES, config=config)
        result = judge(case, got.numpy(), expected, inputs["mask"], time.perf_counter() - t0)
        results.append(result)
        if not result.passed:
            log(f"FAIL {result.case}: error {result.error:.3g} > {result.tolerance:g} "
                f"or {result.nonfinite} non-finite")
            if stop_on_failure:
                break
    return results


def launcher_cases() -> list[Case]:
    """The AOT launcher's matrix: the plugin's dtypes, tile edges around S = 64, a long S, every head-dim tile."""
    cases = []
    for dtype in ("float16", "bfloat16"):
        for seq in LAUNCHER_SEQS:
            for presence in PRESENCE:
                cases.append(Case(seq, 2, 64, presence, "v3-base", dtype, padding=("full",) + PADDING))
            cases.append(Case(seq, 2, 64, "both", "v1-base", dtype, padding=("full",) + PADDING))
        cases += [Case(65, 3, d, "both", "v3-base", dtype, padding=("full",) + PADDING) for d in (32, 48, 128)]
    return cases


LAUNCHER_SEQS = (1, 64, 65, 512)


def run_gpu(cases=None, log=print, launch=None) -> list[Result]:
    """Each case through ``launch`` (default: the Triton kernel) on the GPU vs the torch reference in
    float32 on the same inputs."""
    import torch

    from . import torch_reference

    if launch is None:
        from .kernel import flash_attention as launch

    device = torch.device("cuda")
    results = []
    for index, case in enumerate(cases or gpu_cases()):
        t0 = time.perf_counter()
        try:
            inputs = case_inputs(case, np.random.default_rng(index), smax=max(GPU_SEQS))
            tensors = {k: None if a is None else torch.from_numpy(a).to(device) for k, a in inputs.items()}
            for k in ("q", "k", "v", "pos_key", "pos_query"):
                if tensors[k] is not None:
                    tensors[k] = tensors[k].to(getattr(torch, case.dtype))
            got = launch(**tensors, **SCALES)
            expected = torch_reference.flash_attention(**as_float32(tensors), **SCALES)
            torch.cuda.synchronize()
            result = judge(case, got.float().cpu().numpy(), expected.cpu().numpy(), inputs["mask"],
                           time.perf_counter() - t0)
        except Exception as exc:  # a failing case is a result, the matrix goes on
            result = Result(case.name(), case.dtype, math.nan, SPEC.tolerances[case.dtype], -1, False,
                            round(time.perf_counter() - t0, 3), f"{type(exc).__name__}: {str(exc)[:300]}")
        results.append(result)
        if not result.passed:
            log(f"FAIL {result.case}: error {result.error:.3g} "
                f"(tolerance {result.tolerance:g}), {result.nonfinite} non-finite {result.exception or ''}")
    return results


def summary(results: list[Result]) -> list[str]:
    lines = [f"{'dtype':9} {'cases':>5} {'failed':>6} {'worst error':>11} {'tolerance':>9} {'seconds':>8}"]
    for dtype in SPEC.io_dtypes:
        rs = [r for r in results if r.dtype == dtype]
        if rs:
            worst = max((r.error for r in rs if math.isfinite(r.error)), default=math.nan)
            lines.append(f"{dtype:9} {len(rs):5d} {sum(not r.passed for r in rs):6d} {worst:11.3g} "
                         f"{SPEC.tolerances[dtype]:9.0e} {sum(r.seconds for r in rs):8.1f}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("matrix", choices=("interpret", "gpu", "launcher"))
    parser.add_argument("--library", type=Path, help="launcher: libdebertrt_flash.so (default: built or cached)")
    parser.add_argument("--json", type=Path, help="write every case's result here")
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th case starting at I (parallel runs)")
    args = parser.parse_args(argv)
    try:
        shard, shards = (int(x) for x in args.shard.split("/"))
        if not 0 <= shard < shards:
            raise ValueError
    except ValueError:
        parser.error(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
    if args.matrix == "interpret":
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            print("flash check: triton was imported before TRITON_INTERPRET=1 was set", file=sys.stderr)
            return 2
        os.environ["TRITON_INTERPRET"] = "1"
        results = run_interpret(interpret_cases()[shard::shards])
    else:
        import torch

        if not torch.cuda.is_available():
            print(f"flash check: no CUDA device visible to torch: the {args.matrix} matrix needs one", file=sys.stderr)
            return 2
        if args.matrix == "gpu":
            results = run_gpu(gpu_cases()[shard::shards])
        else:
            from functools import partial

            from . import launcher

            results = run_gpu(launcher_cases()[shard::shards], launch=partial(launcher.flash_attention,
                                                                              library=args.library))
    print("\n".join(summary(results)))
    passed = all(r.passed for r in results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"matrix": args.matrix, "passed": passed,
                                         "cases": [asdict(r) for r in results]}, indent=1))
    print(f"{args.matrix}: {'PASS' if passed else 'FAIL'} ({len(results)} cases)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
