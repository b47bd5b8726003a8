"""GPU check of the DisentangledAttention CUDA kernel: correctness and timing.

Used by ``scripts/bench_kernel.py`` (and ``scripts/gpu_check.sh``) on an H100/H200 with torch
and no TensorRT. Pieces that need no GPU (the torch references, the byte floor, the case
matrix) are plain functions, tested on CPU.

Correctness: every case draws fresh random inputs, poisons the output with NaN, runs the
kernel through :func:`debertrt.plugins.cuda_kernel.disentangled_attention` and compares with
a float64 torch gather reference on the same (upcast) inputs::

    relative error = ||out - ref|| / ||ref||   (fp32 <= 1e-6, fp16/bf16 <= 1e-2; any NaN fails)

Small cases are also compared with the NumPy oracle (``reference.disentangled_attention``);
float32 outputs are expected to match it bit for bit (the kernel rounds like NumPy).

Timing: CUDA events (warm-up, median) of the kernel, of transformers-style eager torch
gathers and of ``torch.compile`` of them, against the byte floor (read c2c + write out +
read the used part of c2p and p2c) at the measured device-to-device copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import cuda_kernel, reference, spec

TOLERANCES = spec.DISENTANGLED_ATTENTION.tolerances
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


# ---- GPU runs -----------------------------------------------------------------------------------


@dataclass
class CheckResult:
    case: str
    rows: int
    sq: int
    sk: int
    span: int
    table: str
    presence: str
    dtype: str
    tolerance: float
    rel_error: float
    nonfinite: int
    passed: bool
    rel_error_numpy: float | None = None
    bit_exact_numpy: bool | None = None
    error: str | None = None


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


def run_case(case: Case, library, tables, device, seed: int, pos_scale: float = 0.37) -> CheckResult:
    torch = _torch()
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    result = CheckResult(case.name(), case.rows, case.sq, case.sk, case.span, case.table, case.presence, case.dtype,
                         TOLERANCES[case.dtype], math.nan, -1, False)
    try:
        c2c, c2p, p2c = _inputs(torch, case, device, generator)
        table = tables[case.table]
        out = torch.full_like(c2c, math.nan)  # poison: anything not written fails
        cuda_kernel.disentangled_attention(c2c, c2p, p2c, table, pos_scale, out=out, library=library)
        torch.cuda.synchronize(device)
        result.nonfinite = int((~torch.isfinite(out)).sum().item())
        ref = torch_reference(c2c, c2p, p2c, table, pos_scale)
        result.rel_error = relative_error(out, ref)
        result.passed = (result.nonfinite == 0 and math.isfinite(result.rel_error)
                         and result.rel_error <= result.tolerance)
        if case.numel <= NUMPY_NUMEL:
            def host(t):
                return None if t is None else t.float().cpu().numpy()

            oracle = reference.disentangled_attention(host(c2c), host(c2p), host(p2c), table.cpu().numpy(), pos_scale)
            got = out.float().cpu().numpy()
            result.rel_error_numpy = float(np.linalg.norm((got.astype(np.float64) - oracle))
                                           / max(np.linalg.norm(oracle.astype(np.float64)), 1e-300))
            if case.dtype == "float32":
                result.bit_exact_numpy = bool(np.array_equal(got.view(np.uint32), oracle.view(np.uint32)))
            result.passed = result.passed and result.rel_error_numpy <= result.tolerance
        del c2c, c2p, p2c, out, ref
    except Exception as exc:  # a failed case is a result, not the end of the run
        result.error = f"{type(exc).__name__}: {exc}"
        result.passed = False
    return result


def run_checks(library, device, quick: bool = False, seed: int = 1234, log=print) -> list[CheckResult]:
    torch = _torch()
    tables = _tables(torch, device)
    results = []
    for index, case in enumerate(correctness_cases(quick)):
        result = run_case(case, library, tables, device, seed + index)
        results.append(result)
        if not result.passed:
            log(f"  FAIL {result.case}: rel_error={result.rel_error:.3g} nonfinite={result.nonfinite}"
                + (f" numpy={result.rel_error_numpy:.3g}" if result.rel_error_numpy is not None else "")
                + (f" [{result.error}]" if result.error else ""))
        if case.numel > FULL_MATRIX_NUMEL:
            torch.cuda.empty_cache()
    return results


def time_cuda(fn, warmup: int = 5, iters: int = 20) -> float:
    """Median milliseconds of ``fn()`` on the current stream (CUDA events)."""
    torch = _torch()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(device, nbytes: int = 1 << 30, iters: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + written)."""
    torch = _torch()
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    src.fill_(1)
    ms = time_cuda(lambda: dst.copy_(src), warmup=3, iters=iters)
    del src, dst
    return 2 * nbytes / (ms * 1e-3)


@dataclass
class TimingResult:
    rows: int
    s: int
    dtype: str
    span: int
    floor_bytes: int
    copy_bandwidth_gbs: float
    floor_ms: float
    kernel_ms: float
    kernel_gbs: float
    kernel_vs_floor: float
    eager_ms: float | None = None
    compile_ms: float | None = None
    kernel_rel_error_vs_eager: float | None = None
    notes: list = field(default_factory=list)


def run_timing(library, device, warmup: int = 10, iters: int = 50, use_compile: bool = True,
               configs=TIMING_CONFIGS, log=print) -> list[TimingResult]:
    torch = _torch()
    bandwidth = copy_bandwidth(device)
    log(f"  device-to-device copy bandwidth: {bandwidth / 1e9:.0f} GB/s")
    table_np = reference.relative_position_table(*TABLES["log"], SMAX)
    table = torch.from_numpy(table_np).to(device)
    span = TABLES["log"][0]
    compiled = None
    results = []
    for rows, s in configs:
        generator = torch.Generator(device=device)
        generator.manual_seed(rows * 100003 + s)
        case = Case(rows, s, s, "log", "both", "float16")
        c2c, c2p, p2c = _inputs(torch, case, device, generator)
        out = torch.empty_like(c2c)
        floor = byte_floor(rows, s, s, table_np, span, c2c.element_size())
        floor_ms = floor / bandwidth * 1e3
        kernel_ms = time_cuda(lambda: cuda_kernel.disentangled_attention(c2c, c2p, p2c, table, 0.37, out=out,
                                                                          library=library), warmup, iters)
        result = TimingResult(rows, s, "float16", span, floor, bandwidth / 1e9, floor_ms, kernel_ms,
                              floor / (kernel_ms * 1e-3) / 1e9, kernel_ms / floor_ms)
        relative_pos = hf_relative_pos(table, s)
        try:
            eager_out = hf_eager(c2c, c2p, p2c, relative_pos, span, 0.37)
            result.kernel_rel_error_vs_eager = relative_error(out, eager_out)
            del eager_out
            result.eager_ms = time_cuda(lambda: hf_eager(c2c, c2p, p2c, relative_pos, span, 0.37), warmup, iters)
        except Exception as exc:  # e.g. out of memory for the eager temporaries
            result.notes.append(f"eager failed: {type(exc).__name__}: {exc}")
        if use_compile:
            try:
                if compiled is None:
                    compiled = torch.compile(hf_eager, dynamic=False)
                t0 = time.perf_counter()
                compiled(c2c, c2p, p2c, relative_pos, span, 0.37)
                torch.cuda.synchronize()
                result.notes.append(f"torch.compile first call {time.perf_counter() - t0:.1f} s")
                result.compile_ms = time_cuda(lambda: compiled(c2c, c2p, p2c, relative_pos, span, 0.37), warmup, iters)
            except Exception as exc:
                result.notes.append(f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        results.append(result)
        del c2c, c2p, p2c, out
        torch.cuda.empty_cache()
    return results


# ---- report -------------------------------------------------------------------------------------


def summarize_checks(results: list[CheckResult]) -> list[str]:
    lines = ["correctness (kernel vs float64 torch reference; NumPy oracle on small cases)",
             f"  {'dtype':9} {'cases':>5} {'failed':>6} {'worst rel err':>13} {'tolerance':>9}"
             f" {'fp32 bit-exact vs NumPy':>24}"]
    for dtype, tol in TOLERANCES.items():
        rs = [r for r in results if r.dtype == dtype]
        if not rs:
            continue
        worst = max((r.rel_error for r in rs if math.isfinite(r.rel_error)), default=math.nan)
        exact = [r.bit_exact_numpy for r in rs if r.bit_exact_numpy is not None]
        exact_text = f"{sum(exact)}/{len(exact)}" if exact else "-"
        failed = sum(not r.passed for r in rs)
        lines.append(f"  {dtype:9} {len(rs):5d} {failed:6d} {worst:13.3g} {tol:9.0e} {exact_text:>24}")
    return lines


def summarize_timing(results: list[TimingResult]) -> list[str]:
    lines = ["timing (fp16, log buckets, span 256, c2p + p2c; median of CUDA events)",
             f"  {'case':18} {'floor MB':>9} {'floor ms':>9} {'kernel ms':>10} {'x floor':>8} {'GB/s':>6}"
             f" {'eager ms':>9} {'compile ms':>10}"]
    for r in results:
        eager = f"{r.eager_ms:9.3f}" if r.eager_ms is not None else f"{'-':>9}"
        comp = f"{r.compile_ms:10.3f}" if r.compile_ms is not None else f"{'-':>10}"
        lines.append(f"  {'BH=%d S=%d' % (r.rows, r.s):18} {r.floor_bytes / 1e6:9.1f} {r.floor_ms:9.3f} "
                     f"{r.kernel_ms:10.3f} {r.kernel_vs_floor:8.2f} {r.kernel_gbs:6.0f} {eager} {comp}")
        for note in r.notes:
            lines.append(f"      {note}")
    return lines


def environment(torch) -> dict:
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "numpy": np.__version__}
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["device"] = props.name
        env["capability"] = f"{props.major}.{props.minor}"
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
    return env


def default_json_path() -> Path:
    base = os.environ.get("OUT")
    return (Path(base) if base else Path("debertrt-out")) / "kernel_check.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--kernel-library", type=Path, help="libdebertrt_kernels.so (default: build or reuse the cache)")
    where.add_argument("--build-dir", type=Path, help="CMake build directory to build the kernel library in")
    p.add_argument("--json", type=Path, default=None, help="result file (default: $OUT/kernel_check.json)")
    p.add_argument("--quick", action="store_true", help="a smaller correctness matrix")
    p.add_argument("--smoke", action="store_true", help="three tiny cases only (for compute-sanitizer runs)")
    p.add_argument("--skip-checks", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="do not time torch.compile")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    args = p.parse_args(argv)
    if args.warmup < 0 or args.iters < 1:
        p.error("--warmup must be >= 0 and --iters >= 1")
    return args


def main(argv=None) -> int:
    """Exit status: 0 every check passed, 1 a check failed, 2 no usable GPU / library."""
    args = parse_args(argv)
    try:
        torch = _torch()
    except ImportError:
        print("kernel_check: PyTorch is not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("kernel_check: no CUDA device visible to torch: nothing to check", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    try:
        path = args.kernel_library or cuda_kernel.find_kernel_library(args.build_dir)
        library = cuda_kernel.load_kernel_library(path)
    except (cuda_kernel.PluginBuildError, cuda_kernel.KernelError, OSError) as exc:
        print(f"kernel_check: {exc}", file=sys.stderr)
        return 2

    report: dict = {"environment": environment(torch), "kernel_library": str(path), "status": "pass"}
    lines: list[str] = []
    if args.smoke:
        tables = _tables(torch, device)
        smoke = [Case(2, 7, 7, "log", "both", "float32"), Case(1, 65, 33, "linear", "c2p", "float16"),
                 Case(3, 33, 65, "log", "p2c", "bfloat16")]
        results = [run_case(c, library, tables, device, 7 + k) for k, c in enumerate(smoke)]
        report["checks"] = [asdict(r) for r in results]
        lines += summarize_checks(results)
        args.skip_timing = True
    elif not args.skip_checks:
        t0 = time.perf_counter()
        print("correctness matrix ...", flush=True)
        results = run_checks(library, device, quick=args.quick)
        report["checks"] = [asdict(r) for r in results]
        report["checks_seconds"] = round(time.perf_counter() - t0, 1)
        lines += summarize_checks(results)
    if "checks" in report and not all(c["passed"] for c in report["checks"]):
        report["status"] = "fail"
    if not args.skip_timing:
        print("timing ...", flush=True)
        timing = run_timing(library, device, args.warmup, args.iters, use_compile=not args.no_compile)
        report["timing"] = [asdict(t) for t in timing]
        lines += [""] + summarize_timing(timing)

    text = "\n".join(lines)
    print(text)
    json_path = args.json or default_json_path()
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str))
    print(f"status: {report['status']}; results in {json_path}")
    return 0 if report["status"] == "pass" else 1


if __name__ == "__main__":  # python -m debertrt.plugins.kernel_check
    sys.exit(main())
