"""The DisentangledAttention kernel's own CUDA source, run on the CPU under sanitizers.

``tests/cuda_host/`` is a small CUDA-on-threads harness (execution model in ``cuda_host.h``,
build and run helpers in ``harness.py``): the unchanged ``.cu`` is compiled as C++ with the
harness header force-included and its launch line rewritten to a call, then linked with the
harness runtime and ``kernel_driver.cpp``, which feeds cases from files to the kernel's C entry
point. Every program is built twice: AddressSanitizer + UndefinedBehaviorSanitizer, and
ThreadSanitizer. Checked here:

- the harness's self-test (shared memory per block, barriers, warp shuffles, launch errors,
  divergent barriers) passes under both;
- the case matrix (S in {1, 7, 63, 64, 65, 130} and five Sq != Sk, rows 1-3, fp32/fp16/bf16,
  log-bucket, linear, too-short and non-monotone tables, c2p/p2c/both, in place) equals the
  NumPy reference bit for bit in every dtype (the kernel rounds once, as NumPy does), with no
  sanitizer report, under both;
- the row loop: with ``kMaxGridY`` cut to 2 in a scratch copy, blocks take several rows each
  (on a GPU that needs more than 65535 rows), same checks;
- defects planted in scratch copies are each reported: a removed ``__syncthreads`` (either
  one; TSan: data race on the shared p2c tile), a c2c read one element past a row (ASan:
  heap-buffer-overflow; the output is still right) and a dropped table-index clamp (ASan:
  heap-buffer-overflow in the table).

Skipped, with the reason, only where the C++ compiler lacks the sanitizers or the CUDA headers
are absent (their host half/bfloat16 conversions are the ones used).
"""

from __future__ import annotations

import re
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from cuda_host import harness
from debertrt.plugins import cuda_kernel, libraries, reference, spec

# its module/session fixtures are costly: one xdist worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_kernel_host_sanitizers")

KERNEL_DIR = Path(cuda_kernel.__file__).resolve().parent / "disentangled_attention"
COMMON_DIR = KERNEL_DIR.parent / "common"  # kernel_api.h
KERNEL_SOURCE = "disentangled_attention_kernel.cu"
KERNEL_HEADER = "disentangled_attention_kernel.cuh"

# ---- cases --------------------------------------------------------------------------------------

POS_SCALE = np.float32(0.37)
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
BITS = {"float32": np.uint32, "float16": np.uint16, "bfloat16": np.uint16}
LOG_TABLE = (16, 64)  # position_buckets, max_relative_positions: log buckets for |r| > 8, span 16
LINEAR_MAX = 48  # linear table, span = min(S, 48) as v1 has it: delta clamps for |r| >= span
TABLES = ("log", "linear", "short", "nonmonotone")
PRESENCE = {"both": (True, True), "c2p": (True, False), "p2c": (False, True)}


@dataclass(frozen=True)
class Case:
    sq: int
    sk: int
    rows: int
    dtype: str
    table: str  # log, linear, short (log, built for a third of the length), nonmonotone (random)
    presence: str
    in_place: bool = False

    @property
    def name(self) -> str:
        return (f"{self.dtype}-{self.sq}x{self.sk}-r{self.rows}-{self.table}-{self.presence}"
                + ("-inplace" if self.in_place else ""))

    def table_and_span(self, rng) -> tuple[np.ndarray, int]:
        s = max(self.sq, self.sk)
        if self.table == "log":
            return reference.relative_position_table(*LOG_TABLE, s), LOG_TABLE[0]
        if self.table == "short":
            return reference.relative_position_table(*LOG_TABLE, max(1, s // 3)), LOG_TABLE[0]
        if self.table == "linear":
            return reference.relative_position_table(0, LINEAR_MAX, s), min(s, LINEAR_MAX)
        span = 8  # nonmonotone: values far outside [-span, span) exercise the delta clamp both ways
        return rng.integers(-3 * span, 3 * span + 1, size=2 * s - 1).astype(np.int32), span


def clamped_table(table: np.ndarray, s: int) -> np.ndarray:
    """The table the kernel reads for length s: its index is clamped into the table, i.e. the
    table extended at both ends by its end values (the reference refuses a short table)."""
    missing = max(0, s - (len(table) + 1) // 2)
    return np.pad(table, missing, mode="edge")


def matrix() -> list[Case]:
    """Every size x dtype x table; rows and presence rotate so that each (size, table) sees
    all three presences and every size sees rows 1-3. Plus Sq != Sk and in place."""
    cases = []
    presences = tuple(PRESENCE)
    for si, s in enumerate((1, 7, 63, 64, 65, 130)):
        for di, dtype in enumerate(spec.IO_DTYPES):
            for ti, table in enumerate(TABLES):
                cases.append(Case(s, s, 1 + (si + ti) % 3, dtype, table, presences[(di + ti) % 3]))
    cases += [Case(65, 33, 2, "float32", "log", "both"), Case(33, 65, 2, "float16", "nonmonotone", "p2c"),
              Case(1, 130, 3, "bfloat16", "linear", "c2p"), Case(130, 7, 2, "float32", "short", "both"),
              Case(100, 37, 2, "float32", "nonmonotone", "both")]
    cases += [Case(65, 65, 2, "float16", "linear", "both", in_place=True),
              Case(130, 130, 1, "bfloat16", "log", "p2c", in_place=True)]
    return cases


# Rows 3 and up with kMaxGridY = 2: block row y takes rows y and y + 2 (and y + 4).
ROW_LOOP_CASES = [Case(7, 7, 3, "float32", "log", "both"), Case(65, 65, 5, "float16", "nonmonotone", "p2c"),
                  Case(64, 33, 4, "bfloat16", "short", "c2p"), Case(65, 65, 3, "float32", "linear", "both",
                                                                    in_place=True)]


def write_cases(directory: Path, cases: list[Case]) -> dict[str, tuple[Case, np.ndarray]]:
    """Inputs and cases.txt for kernel_driver; returns name -> (case, expected output)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines, expected = [], {}
    for case in cases:
        rng = np.random.default_rng(zlib.crc32(case.name.encode()))
        table, span = case.table_and_span(rng)
        dtype = NUMPY_DTYPES[case.dtype]
        has_c2p, has_p2c = PRESENCE[case.presence]

        def rand(*shape):
            return (rng.standard_normal(shape, dtype=np.float32) * 2).astype(dtype)

        tensors = {"c2c": rand(case.rows, case.sq, case.sk), "table": table,
                   "c2p": rand(case.rows, case.sq, 2 * span) if has_c2p else None,
                   "p2c": rand(case.rows, case.sk, 2 * span) if has_p2c else None}
        for suffix, tensor in tensors.items():
            if tensor is not None:
                tensor.tofile(directory / f"{case.name}.{suffix}")
        expected[case.name] = (case, reference.disentangled_attention(
            tensors["c2c"], tensors["c2p"], tensors["p2c"], clamped_table(table, max(case.sq, case.sk)), POS_SCALE))
        lines.append(f"{case.name} {cuda_kernel.DTYPE_CODES[case.dtype]} {case.rows} {case.sq} {case.sk} {span} "
                     f"{len(table)} {float(POS_SCALE).hex()} {int(has_c2p)} {int(has_p2c)} {int(case.in_place)}")
    (directory / "cases.txt").write_text("\n".join(lines) + "\n")
    return expected


def mismatches(directory: Path, expected: dict[str, tuple[Case, np.ndarray]]) -> list[str]:
    """Cases whose output differs from the reference in any bit (an unwritten output stays NaN)."""
    bad = []
    for name, (case, want) in expected.items():
        got = np.fromfile(directory / f"{name}.out", dtype=NUMPY_DTYPES[case.dtype]).reshape(want.shape)
        differ = got.view(BITS[case.dtype]) != want.view(BITS[case.dtype])
        if differ.any():
            bad.append(f"{name}: {int(differ.sum())} of {differ.size} outputs differ, first at "
                       f"{tuple(int(i) for i in np.argwhere(differ)[0])}")
    return bad


# ---- scratch variants of the kernel -------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    old: str  # occurs `occurrences` times in the kernel (so the edit lands where it is meant to)
    new: str  # replaces the first occurrence
    occurrences: int = 1


ROW_LOOP = Edit("constexpr int32_t kMaxGridY = 65535;", "constexpr int32_t kMaxGridY = 2;")


@dataclass(frozen=True)
class Defect:
    name: str
    sanitizer: str
    edits: tuple[Edit, ...]
    variant: str  # the clean program the same case runs on: kernel or rowloop
    case: Case
    report: tuple[str, ...]  # regular expressions that all match the report


DEFECTS = (
    # The barrier between staging the p2c tile and reading it (the first of the two).
    Defect("missing_syncthreads", "tsan", (Edit("__syncthreads();", ";", 2),), "kernel",
           Case(65, 65, 2, "float32", "log", "both"),
           ("WARNING: ThreadSanitizer: data race", "Location is global .*p2cTile")),
    # The barrier before the next row's staging: only a block that loops over rows needs it.
    Defect("missing_row_syncthreads", "tsan",
           (ROW_LOOP, Edit("__syncthreads(); // the next row", "; // the next row")), "rowloop",
           Case(7, 7, 3, "float32", "log", "both"),
           ("WARNING: ThreadSanitizer: data race", "Location is global .*p2cTile")),
    # The load predicate (the first of two identical ones; the store keeps its own), so the last
    # row reads c2c[b, Sq - 1, Sk], one element past the 7 x 7 fp32 buffer.
    Defect("read_past_row", "asan", (Edit("j >= 0 && j < shape.sk)", "j >= 0 && j <= shape.sk)", 2),), "kernel",
           Case(7, 7, 1, "float32", "log", "both"),
           ("ERROR: AddressSanitizer: heap-buffer-overflow", "READ of size 4", r"#\d+ .* in .*\bloadAliased\b",
            "0 bytes (to the right of|after) 196-byte region")),
    # The table-index clamp. Even a table of the right length (S = 64: 127 entries) is read past
    # its end without it: the last r tile of a query tile overhangs the valid r range.
    Defect("dropped_table_clamp", "asan",
           (Edit("    tableIdx = tableIdx < 0 ? 0 : (tableIdx >= shape.tableLen ? shape.tableLen - 1 : tableIdx);\n",
                 ""),), "kernel", Case(64, 64, 1, "float32", "log", "both"),
           ("ERROR: AddressSanitizer: heap-buffer-overflow", "READ of size 4", r"#\d+ .* in .*\bdeltaOf\b",
            "0 bytes (to the right of|after) 508-byte region")),
)


def edits_apply(edits: tuple[Edit, ...]) -> list[str]:
    """What no longer matches the kernel (empty: every edit lands where it is meant to)."""
    text = (KERNEL_DIR / KERNEL_SOURCE).read_text()
    return [f"{e.old!r} occurs {text.count(e.old)} times, not {e.occurrences}" for e in edits
            if text.count(e.old) != e.occurrences]


def scratch_copy(edits: tuple[Edit, ...], directory: Path) -> Path:
    """A copy of the kernel sources with the edits made; returns the .cu."""
    directory.mkdir(parents=True)
    shutil.copy(KERNEL_DIR / KERNEL_HEADER, directory / KERNEL_HEADER)
    text = (KERNEL_DIR / KERNEL_SOURCE).read_text()
    for edit in edits:
        text = text.replace(edit.old, edit.new, 1)
    (directory / KERNEL_SOURCE).write_text(text)
    return directory / KERNEL_SOURCE


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toolchain(tmp_path_factory) -> harness.Toolchain:
    found = harness.find_toolchain(libraries.find_cuda_include_dir(), tmp_path_factory.mktemp("probe"))
    if isinstance(found, str):
        pytest.skip(found)
    return found


def require(toolchain: harness.Toolchain, sanitizer: str) -> None:
    if sanitizer in toolchain.unavailable:
        pytest.skip(toolchain.unavailable[sanitizer])


@pytest.fixture(scope="module")
def executables(toolchain, tmp_path_factory) -> dict[str, Path]:
    """Every program of this module, built once: the self-test, the kernel and its row-loop
    variant per sanitizer, each defect (whose edits still apply) with its sanitizer."""
    root = tmp_path_factory.mktemp("cuda_host")
    t0 = time.perf_counter()

    def kernel_program(name: str, sanitizer: str, source: Path) -> harness.Program:
        return harness.Program(name, sanitizer, source, harness.HARNESS / "kernel_driver.cpp",
                               (KERNEL_DIR, COMMON_DIR))

    rowloop = scratch_copy((ROW_LOOP,), root / "scratch" / "rowloop") if not edits_apply((ROW_LOOP,)) else None
    programs = []
    for sanitizer in toolchain.sanitizers:
        programs.append(harness.Program(f"selftest-{sanitizer}", sanitizer, harness.HARNESS / "harness_selftest.cu"))
        programs.append(kernel_program(f"kernel-{sanitizer}", sanitizer, KERNEL_DIR / KERNEL_SOURCE))
        if rowloop is not None:
            programs.append(kernel_program(f"rowloop-{sanitizer}", sanitizer, rowloop))
    for defect in DEFECTS:
        if defect.sanitizer in toolchain.sanitizers and not edits_apply(defect.edits):
            source = scratch_copy(defect.edits, root / "scratch" / defect.name)
            programs.append(kernel_program(defect.name, defect.sanitizer, source))
    built = harness.build(toolchain, programs, root / "build")
    print(f"\ncuda_host: built {len(programs)} programs with {toolchain.cxx} in {time.perf_counter() - t0:.1f} s")
    return built


@pytest.fixture(scope="module")
def case_runs(toolchain, executables, tmp_path_factory):
    """The case matrix on the kernel and the row-loop cases on its variant, under every
    available sanitizer, all runs side by side. Returns {(variant, sanitizer): (dir, expected, run)}."""
    root = tmp_path_factory.mktemp("cases")
    inputs = {variant: (root / variant, write_cases(root / variant, cases))
              for variant, cases in (("kernel", matrix()), ("rowloop", ROW_LOOP_CASES))}
    keys = [(v, s) for v in inputs for s in toolchain.sanitizers if f"{v}-{s}" in executables]
    runs = harness.run_all([(executables[f"{v}-{s}"], [str(inputs[v][0])], s) for v, s in keys], root / "logs")
    for (variant, sanitizer), run in zip(keys, runs):
        print(f"cuda_host: {len(inputs[variant][1])} {variant} cases under {sanitizer}: {run.seconds:.1f} s")
    return {key: (*inputs[key[0]], run) for key, run in zip(keys, runs)}


def assert_clean(run: harness.Run, sanitizer: str) -> None:
    assert run.returncode == 0 and not run.reports(sanitizer), run.describe()


# ---- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sanitizer", list(harness.SANITIZERS))
def test_harness_selftest(toolchain, executables, sanitizer, tmp_path):
    require(toolchain, sanitizer)
    exe = executables[f"selftest-{sanitizer}"]
    checks, block, warp = harness.run_all([(exe, [], sanitizer), (exe, ["divergent-block"], sanitizer),
                                           (exe, ["divergent-warp"], sanitizer)], tmp_path)
    assert_clean(checks, sanitizer)
    assert re.search(r"^PASS: \d+ checks$", checks.stdout, re.M), checks.stdout
    assert block.returncode != 0 and "cuda_host: divergent __syncthreads" in block.stderr, block.describe()
    assert warp.returncode != 0 and "cuda_host: divergent warp barrier" in warp.stderr, warp.describe()


def test_launch_rewrite_keeps_everything_else(tmp_path):
    source = KERNEL_DIR / KERNEL_SOURCE
    target = tmp_path / "kernel.cpp"
    assert harness.translate(source, target) == 1
    before = source.read_text().splitlines()
    after = target.read_text().splitlines()
    assert after[0] == f'#line 1 "{source}"' and len(after) == len(before) + 1
    changed = [(a, b) for a, b in zip(before, after[1:]) if a != b]
    assert len(changed) == 1, changed
    assert "disentangledAttentionKernel<T><<<grid, block, 0, stream>>>(" in changed[0][0]
    assert "::cuda_host::launch(disentangledAttentionKernel<T>, grid, block, 0, stream)(" in changed[0][1]


def test_case_matrix_covers_the_issue():
    cases = matrix()
    assert {c.sq for c in cases if c.sq == c.sk} == {1, 7, 63, 64, 65, 130}
    assert {(c.sq, c.rows) for c in cases if c.sq == c.sk} >= {(s, r) for s in (1, 7, 63, 64, 65, 130)
                                                               for r in (1, 2, 3)}
    assert {(c.dtype, c.table) for c in cases} >= {(d, t) for d in spec.IO_DTYPES for t in TABLES}
    assert {(c.table, c.presence) for c in cases} >= {(t, p) for t in TABLES for p in PRESENCE}
    assert len({c.name for c in cases}) == len(cases)
    # The row-loop cases do loop: more rows than the variant's grid has block rows.
    assert all(c.rows > 2 for c in ROW_LOOP_CASES)


@pytest.mark.parametrize("variant", ["kernel", "rowloop"])
@pytest.mark.parametrize("sanitizer", list(harness.SANITIZERS))
def test_kernel_matches_reference_without_reports(toolchain, case_runs, variant, sanitizer):
    require(toolchain, sanitizer)
    assert not edits_apply((ROW_LOOP,)) or variant == "kernel", f"row-loop variant: {edits_apply((ROW_LOOP,))}"
    directory, expected, run = case_runs[(variant, sanitizer)]
    assert_clean(run, sanitizer)
    assert f"ran {len(expected)} cases" in run.stdout
    assert mismatches(directory, expected) == []


@pytest.mark.parametrize("defect", DEFECTS, ids=lambda d: d.name)
def test_planted_defect_is_reported(toolchain, executables, defect, tmp_path):
    require(toolchain, defect.sanitizer)
    assert not edits_apply(defect.edits), f"the kernel changed, update the defect: {edits_apply(defect.edits)}"
    baseline = f"{defect.variant}-{defect.sanitizer}"
    expected = {program: write_cases(tmp_path / program, [defect.case]) for program in (baseline, defect.name)}
    clean, planted = harness.run_all([(executables[p], [str(tmp_path / p)], defect.sanitizer) for p in expected],
                                     tmp_path / "logs")
    # The same case without the defect: no report, the reference's output.
    assert_clean(clean, defect.sanitizer)
    assert mismatches(tmp_path / baseline, expected[baseline]) == []
    missing = [pattern for pattern in defect.report if not re.search(pattern, planted.stderr)]
    assert planted.returncode != 0 and not missing, f"missing {missing}\n{planted.describe()}"
    assert f"{defect.name}/{KERNEL_SOURCE}:" in planted.stderr  # a frame in the planted source
    print(f"\n{defect.name}: " + next(line for line in planted.stderr.splitlines()
                                      if any(m in line for m in harness.SANITIZERS[defect.sanitizer].markers)))
