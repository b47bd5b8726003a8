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

from . import cuda_kernel, libraries, reference
from .kernel_cases import (FULL_MATRIX_NUMEL, NUMPY_NUMEL, SMAX, TABLES, TIMING_CONFIGS, TOLERANCES, Case,
                           _inputs, _tables, byte_floor, correctness_cases, hf_eager, hf_relative_pos,
                           relative_error, torch_reference)

def _torch():
    import torch

    return torch


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
        path = args.kernel_library or libraries.find_kernel_library(args.build_dir)
        library = cuda_kernel.load_kernel_library(path)
    except (libraries.PluginBuildError, cuda_kernel.KernelError, OSError) as exc:
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
