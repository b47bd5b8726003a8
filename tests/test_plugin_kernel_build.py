"""The plugin project builds and its libraries expose what they promise; CPU only.

- CMake + nvcc build ``libdebertrt_kernels.so`` (all five architectures) once per session; it
  exports the C entry point, which validates its arguments without touching a device;
- the same build generates the fused kernel's cubins with Triton (one variant set: sm_90, fp16,
  head-dim tile 64, the three presences) and links ``libdebertrt_flash.so``: it exports only its C
  API, holds exactly the requested variants, and its launcher refuses bad arguments with a reason
  before touching a device; the launcher does not compile against a kernel whose parameters differ
  from its argument order;
- with TensorRT headers (``DEBERTRT_TRT_INCLUDE`` = an include dir, or ``TensorRT_ROOT`` = a
  prefix): the compile-only build of the plugin sources; ``libdebertrt_plugins.so`` exports
  ``getCreators``/``setLoggerFinder`` and needs no TensorRT symbol; the host self-test drives
  both creators and plugins, and what it prints (creators, fields, kinds, accepted dtypes, and
  which field values createPlugin accepts, probed from the spec's bounds) equals ``plugins/spec.py``;
  ``libdebertrt_plugins_static.so`` (linked against a stub libnvinfer built here) registers both
  creators under namespace ``debertrt`` when loaded;
- the Python binding's argument checks and one-line build errors.

Anything absent (cmake, nvcc, TensorRT headers, g++, triton, a GPU) is a skip with the reason.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from debertrt.plugins import cuda_kernel, libraries, reference, spec

# its module/session fixtures are costly: one xdist worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_plugin_kernel_build")

REPO = Path(__file__).resolve().parent.parent
PLUGIN_DIR = Path(cuda_kernel.__file__).resolve().parent / "disentangled_attention"
TESTING_DIR = PLUGIN_DIR.parent / "testing"
# The fused kernel's cubins this module builds: one target, one dtype, one head-dim tile (three presences).
FLASH = libraries.FlashVariants(archs=(90,), dtypes=("float16",), head_dims=(64,))
HAS_TRITON = importlib.util.find_spec("triton") is not None
PRESENCE_NAMES = ("both", "c2p", "p2c")


def _require_build_tools():
    if libraries.find_cmake() is None:
        pytest.skip("cmake not found on PATH: cannot build the plugin project")
    if libraries.find_nvcc() is None:
        pytest.skip("nvcc not found (PATH, CUDACXX, CUDA_HOME, /usr/local/cuda): cannot build CUDA sources")


def _trt_include_dir() -> Path | None:
    candidates = []
    if os.environ.get("DEBERTRT_TRT_INCLUDE"):
        candidates.append(Path(os.environ["DEBERTRT_TRT_INCLUDE"]))
    if os.environ.get("TensorRT_ROOT"):
        candidates.append(Path(os.environ["TensorRT_ROOT"]) / "include")
    for path in candidates:
        if (path / "NvInferRuntime.h").is_file():
            return path.resolve()
    return None


def _require_trt_headers() -> Path:
    include = _trt_include_dir()
    if include is None:
        pytest.skip("TensorRT headers not found: set DEBERTRT_TRT_INCLUDE (include dir) or TensorRT_ROOT (prefix) "
                    "to compile the TensorRT plugin")
    return include


def _nm(path: Path, *flags: str) -> str:
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) not found")
    return subprocess.run(["nm", "-D", *flags, str(path)], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def fake_trt_root(tmp_path_factory) -> Path | None:
    """A TensorRT prefix: the real headers (from the environment) and, when g++ can build it, a
    stub lib/libnvinfer.so whose getPluginRegistry() records registrations. None without headers."""
    include = _trt_include_dir()
    if include is None:
        return None
    root = tmp_path_factory.mktemp("tensorrt")
    (root / "include").symlink_to(include, target_is_directory=True)
    (root / "lib").mkdir()
    cuda_include = libraries.find_cuda_include_dir()
    if cuda_include is not None and shutil.which("g++") is not None:
        stub = TESTING_DIR / "nvinfer_stub.cpp"
        proc = subprocess.run(["g++", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
                               "-Wno-deprecated-declarations", "-isystem", str(include), "-isystem", str(cuda_include),
                               str(stub), "-o", str(root / "lib" / "libnvinfer.so")], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"\nstub libnvinfer not built: {proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else '?'}")
    return root


@pytest.fixture(scope="module")
def build_result(tmp_path_factory, fake_trt_root) -> libraries.BuildResult:
    """One configure + build of the whole project (five architectures, the FLASH cubins), shared by this module."""
    _require_build_tools()
    build_dir = tmp_path_factory.mktemp("plugins-build")
    t0 = time.perf_counter()
    result = libraries.build(build_dir, tensorrt_root=fake_trt_root, flash=FLASH)
    print(f"\ncmake configure + build of plugins/ ({libraries.DEFAULT_CUDA_ARCHITECTURES}, "
          f"TensorRT headers {'found' if fake_trt_root else 'absent'}, fused kernel "
          f"{'compiled' if result.flash_library else 'not built'}): {time.perf_counter() - t0:.1f} s")
    return result


def _require_flash(build_result) -> Path:
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install -e '.[dev]'): the fused kernel's cubins are not built")
    assert build_result.flash_library is not None, f"no {libraries.FLASH_LIBRARY} (see {build_result.log})"
    return build_result.flash_library


# ---- kernel library ------------------------------------------------------------------------------


def test_kernel_library_builds(build_result):
    assert build_result.kernel_library is not None, f"no {libraries.KERNEL_LIBRARY} (see {build_result.log})"
    assert build_result.kernel_selftest is not None
    blob = build_result.kernel_library.read_bytes()
    # Each embedded cubin carries its ptxas command line; the PTX its .target.
    sass = {int(m) for m in re.findall(rb"-arch sm_(\d+)", blob)}
    assert sass == {80, 86, 89, 90}, sass
    assert b".target sm_90" in blob, "compute_90 PTX missing"


def test_kernel_library_exports_only_the_c_api(build_result):
    defined = _nm(build_result.kernel_library, "--defined-only")
    names = {line.split()[-1] for line in defined.splitlines() if line.split() and line.split()[-2] in "TtWDBRV"}
    assert cuda_kernel.ENTRY_POINT in names
    assert {"debertrt_kernel_abi_version", "debertrt_error_string"} <= names
    leaked = {n for n in names if n.startswith(("cuda", "_Z"))}
    assert not leaked, f"internal symbols exported: {sorted(leaked)[:5]}"


def test_c_entry_point_validates_without_a_device(build_result):
    lib = cuda_kernel.load_kernel_library(build_result.kernel_library)  # also checks the ABI version
    entry = getattr(lib, cuda_kernel.ENTRY_POINT)
    invalid_value = 1  # cudaErrorInvalidValue
    table = (ctypes.c_int32 * 1)(0)
    a, p, o = 0x1000, 0x2000, 0x3000  # never dereferenced: validation fails first

    def call(dtype=0, c2c=a, c2p=p, p2c=None, rel=ctypes.addressof(table), rel_len=1, out=o, rows=1, sq=1, sk=1,
             span=1):
        return entry(dtype, c2c, c2p, p2c, rel, rel_len, out, rows, sq, sk, span, 1.0, None)

    assert call(rows=0, c2c=None, c2p=None, rel=None, out=None) == 0  # nothing to do is a success
    assert call(c2c=None) == invalid_value
    assert call(c2p=None) == invalid_value  # neither positional input
    assert call(dtype=3) == invalid_value
    assert call(span=0) == invalid_value
    assert call(rel_len=0) == invalid_value
    assert call(sq=0) == invalid_value
    assert call(rows=-1) == invalid_value
    assert call(out=p) == invalid_value  # out aliases c2p
    assert call(sq=2**31 - 100, sk=2**31 - 100) == invalid_value  # Sq + Sk past the int32 index range
    assert lib.debertrt_error_string(invalid_value) == b"invalid argument"


def test_kernel_selftest_runs_or_reports_no_device(build_result):
    proc = subprocess.run([str(build_result.kernel_selftest), "--quick"], capture_output=True, text=True, timeout=300)
    if proc.returncode == 2 and "no CUDA device" in proc.stderr:
        pytest.skip("no CUDA device: the kernel self-test only ran its argument parsing (scripts/gpu_check.sh runs it)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout


def test_readme_torch_example_runs_on_a_gpu(build_result):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the README's torch example needs one")
    readme = (PLUGIN_DIR / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    os.environ["DEBERTRT_KERNEL_LIBRARY"] = str(build_result.kernel_library)
    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:
        del os.environ["DEBERTRT_KERNEL_LIBRARY"]


# ---- the fused kernel's AOT launcher ---------------------------------------------------------------


def test_flash_library_holds_the_requested_cubins_and_exports_only_its_c_api(build_result):
    from debertrt.plugins.flash import launcher

    library = _require_flash(build_result)
    defined = {line.split()[-1] for line in _nm(library, "--defined-only").splitlines()
               if line.split() and line.split()[-2] == "T"}
    assert defined == {"debertrt_flash_attention", "debertrt_flash_kernel_arguments", "debertrt_flash_kernel_parameters",
                       "debertrt_flash_last_error", "debertrt_flash_abi_version", "debertrt_flash_variant_count",
                       "debertrt_flash_variant"}
    held = launcher.variants(launcher.load(library))
    assert [(v["arch"], v["dtype"], v["block_d"], v["has_c2p"], v["has_p2c"]) for v in held] == [
        (90, "float16", 64, c2p, p2c) for c2p, p2c in ((True, True), (True, False), (False, True))]
    assert all(0 < v["shared_bytes"] <= 48 * 1024 for v in held)
    assert b"sm_90" in library.read_bytes()  # the cubins' ELF notes name their target


def test_flash_launcher_refuses_bad_arguments_without_a_device(build_result):
    from debertrt.plugins.flash import launcher

    lib = launcher.load(_require_flash(build_result))
    fake = {name: 0x100000 + 0x1000 * k for k, name in
            enumerate(("q", "k", "v", "pos_key", "pos_query", "mask", "rel_table", "out"))}
    dims = (2, 12, 64, 64, 512)  # batch, heads, seq, head dim, 2P

    def call(dtype="float16", table=1023, dims=dims, **changes):
        return launcher.call(lib, dtype, {**fake, **changes}, table, dims, (1.0, 0.125, 0.125))

    invalid_value = 1
    assert call(dims=(0, 12, 64, 64, 512), q=None) == (0, "")  # an empty batch launches nothing
    code, why = call(dtype="bfloat16")
    assert code == invalid_value and "no DisentangledFlashAttention kernel for bfloat16" in why
    assert "sm_90 x float16 x head dims <= 64" in call(dtype="float16", dims=(2, 12, 64, 128, 512))[1]
    assert "multiple of 16" in call(dims=(2, 12, 64, 24, 512))[1]
    assert "at least one of pos_key" in call(pos_key=None, pos_query=None)[1]
    assert "16-byte aligned" in call(k=fake["k"] + 2)[1]
    assert "odd length >= 127" in call(table=101)[1]
    assert "even number of rows" in call(dims=(2, 12, 64, 64, 511))[1]
    assert "must not be one of the inputs" in call(out=fake["q"])[1]
    assert "32-bit" in call(dims=(2, 2**16, 2**10, 64, 512), table=2**11 - 1)[1]
    code, why = call()  # every argument fine: now a device is needed
    if code == 0:
        pytest.skip("a CUDA device took the launch: the no-device path is not exercised here")
    assert code != invalid_value and "CUDA" in why, why


# Runs in a child with TRITON_INTERPRET=1: the Triton kernel, interpreted on the CPU, with exactly the
# scalar arguments and grid the C++ launcher computes for a launch; argv[2] = "swap" exchanges two of
# them (sqh, sqs), which must break the result.
LAUNCHER_ARGUMENTS_CODE = r"""
import json, sys
import numpy as np, torch
from debertrt.plugins.flash import check, launcher, reference
from debertrt.plugins.flash.kernel import DEFAULT_CONFIG, _flash_fwd

lib = launcher.load(sys.argv[1])
results = []
for presence, off in [(name, False) for name in check.PRESENCE] + [("both", True)]:
    case = check.Case(40, 2, 48, presence, "v3", "float16", padding=("right", "left"))
    inputs = check.case_inputs(case, np.random.default_rng(7))
    names = ("q", "k", "v", "pos_key", "pos_query", "mask", "rel_table", "out")
    fake = {n: 0x100000 + 0x1000 * i for i, n in enumerate(names) if n == "out" or inputs[n] is not None}
    rows = (inputs["pos_key"] if inputs["pos_key"] is not None else inputs["pos_query"]).shape[1]
    dims = (2, case.heads, case.seq, case.head_dim, rows)
    scalars, (programs, threads, shared) = launcher.kernel_arguments(
        lib, "float16", fake, len(inputs["rel_table"]), dims, tuple(check.SCALES.values()))
    if off:
        scalars["P"] -= 1
    block_d = min(v["block_d"] for v in launcher.variants(lib) if v["block_d"] >= case.head_dim)
    t = {n: None if a is None else torch.from_numpy(a) for n, a in inputs.items()}
    out = torch.full((2, case.seq, case.heads * case.head_dim), float("nan"), dtype=torch.float16)
    _flash_fwd[(programs,)](
        Q=t["q"], K=t["k"], V=t["v"], PK=t["pos_key"], PQ=t["pos_query"], MASK=t["mask"], TABLE=t["rel_table"],
        OUT=out, **scalars, sqd=1, skd=1, svd=1, spkd=1, spqd=1, sms=1, sod=1,
        MASKED=reference.masked_score("float16"), HAS_C2P=inputs["pos_key"] is not None,
        HAS_P2C=inputs["pos_query"] is not None, BLOCK_M=DEFAULT_CONFIG.block_m, BLOCK_N=DEFAULT_CONFIG.block_n,
        BLOCK_D=block_d, WINDOW=DEFAULT_CONFIG.window, PRECISION="tf32", num_warps=threads // 32,
        num_stages=DEFAULT_CONFIG.num_stages)
    expected = reference.flash_attention(**check.as_float32(inputs), **check.SCALES)
    result = check.judge(case, out.float().numpy(), expected, inputs["mask"], 0.0)
    results.append([presence, off, result.error, result.passed, programs])
print(json.dumps(results))
"""


def test_flash_launcher_arguments_drive_the_interpreted_kernel_to_the_oracle(build_result):
    """The scalars and grid the C++ launcher computes (strides, table offset, span, tiles, log2 e-scaled
    factors) make the kernel compute the op: the Triton kernel interpreted on the CPU with exactly those
    arguments equals the NumPy oracle for every presence, head dim 48 in the 64 tile; with the span off by
    one, it does not."""
    library = _require_flash(build_result)
    proc = subprocess.run([sys.executable, "-c", LAUNCHER_ARGUMENTS_CODE, str(library)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TRITON_INTERPRET="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    *good, off = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(r[0], r[1]) for r in good] == [(name, False) for name in PRESENCE_NAMES] and all(r[3] for r in good), good
    assert all(r[4] == 2 * 2 * 2 for r in good)  # batch x heads x ceil(40 / 32) programs
    assert off[1] and not off[3] and off[2] > 0.01, off


def test_flash_launcher_does_not_compile_against_another_kernel_signature(build_result, tmp_path):
    """The launcher's argument order is checked against the parameters the generator read from the
    compiled kernel: a table listing them in another order is a compile error."""
    _require_flash(build_result)
    if shutil.which("g++") is None or libraries.find_cuda_include_dir() is None:
        pytest.skip("g++ or the CUDA headers not found")
    table = (build_result.build_dir / "flash_cubins" / "flash_cubins.inc").read_text()
    source = PLUGIN_DIR.parent / "flash" / "flash_launcher.cpp"

    def compiles(text: str) -> subprocess.CompletedProcess:
        (tmp_path / "flash_cubins.inc").write_text(text)
        return subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-I", str(tmp_path), "-I",
                               str(PLUGIN_DIR.parent / "common"), "-isystem", str(libraries.find_cuda_include_dir()),
                               str(source)], capture_output=True, text=True)

    assert compiles(table).returncode == 0, compiles(table).stderr
    swapped = table.replace('"Q,K,V,PK,PQ,', '"Q,K,V,PQ,PK,', 1)
    assert swapped != table
    proc = compiles(swapped)
    assert proc.returncode != 0 and "whose parameters differ" in proc.stderr


# ---- TensorRT plugins ----------------------------------------------------------------------------


def test_plugin_compile_only_against_tensorrt_headers(tmp_path):
    include = _require_trt_headers()
    _require_build_tools()
    targets = ["debertrt_plugin_common_objects", "debertrt_plugin_objects", "debertrt_plugin_static_objects"]
    result = libraries.build(tmp_path / "compile-only", tensorrt_root=include.parent, compile_only=True, flash=FLASH,
                             targets=targets)
    objects = sorted(p.name for p in (tmp_path / "compile-only").rglob("*.cpp.o"))
    flash = ["disentangled_flash_attention_plugin.cpp.o"] if HAS_TRITON else []
    # the plugins once, and the registration of each library: loadLibrary's entry points, load-time registration
    assert objects == sorted(["disentangled_attention_plugin.cpp.o", "plugin_base.cpp.o", *flash,
                              "plugin_registration.cpp.o", "plugin_registration.cpp.o"]), objects
    assert result.plugin_library is None and result.plugin_static_library is None
    assert "TensorRT" in result.log.read_text()


def test_plugin_library_exports_loadlibrary_entry_points(build_result):
    _require_trt_headers()
    assert build_result.plugin_library is not None, f"no {libraries.PLUGIN_LIBRARY} (see {build_result.log})"
    defined = {line.split()[-1] for line in _nm(build_result.plugin_library, "--defined-only").splitlines()
               if line.split() and line.split()[-2] == "T"}
    assert defined == {"getCreators", "setLoggerFinder"}
    undefined = _nm(build_result.plugin_library, "--undefined-only")
    assert "nvinfer" not in undefined and "getPluginRegistry" not in undefined  # no TensorRT library needed


# A valid field set per op: the probes change one field at a time.
VALID_FIELDS = {
    spec.OP_TYPE: dict(position_buckets=256, max_relative_positions=512, pos_scale=0.125, has_c2p=1, has_p2c=1),
    spec.FLASH_OP_TYPE: dict(q_scale=1.0, k_scale=0.125, pos_scale=0.125, has_c2p=1, has_p2c=1,
                             position_buckets=256, max_relative_positions=512),
}


def probes(op: spec.OpSpec) -> list[dict]:
    """Field sets around every bound of the spec: each bound, one step past it, a float that is not
    finite, each field missing, neither positional term."""
    base = VALID_FIELDS[op.op_type]
    sets = [base, {**base, "has_c2p": 0, "has_p2c": 0}]
    for f in op.fields:
        sets.append({k: v for k, v in base.items() if k != f.name})
        step = 1 if f.kind == "int" else 0.5
        for bound, outside in ((f.minimum, -step), (f.maximum, step)):
            if bound is not None:
                sets += [{**base, f.name: bound}, {**base, f.name: bound + outside}]
        if f.kind == "float":
            sets += [{**base, f.name: math.inf}, {**base, f.name: math.nan}, {**base, f.name: -3.5}]
    return sets


def spec_accepts(op: spec.OpSpec, values: dict) -> bool:
    try:
        op.node_attributes(**values)
    except ValueError:
        return False
    return True


def probe_text(values: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def test_plugin_selftest_agrees_with_the_spec(build_result):
    """The host self-test drives every creator and plugin (PASS), and what it reports equals plugins/spec.py."""
    _require_trt_headers()
    assert build_result.plugin_selftest is not None and build_result.plugin_library is not None
    ops = [op for op in spec.OPS.values() if HAS_TRITON or op.op_type == spec.OP_TYPE]
    args = [str(build_result.plugin_selftest), str(build_result.plugin_library)]
    for op in ops:
        for values in probes(op):
            args += ["--probe", op.op_type, probe_text(values)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^PASS: \d+ checks, 0 failed$", proc.stdout, re.M), proc.stdout
    lines = [line.split(" ") for line in proc.stdout.splitlines()]
    creators = [line[1:] for line in lines if line[0] == "creator"]
    assert creators == [[op.op_type, op.plugin_version, op.plugin_namespace] for op in ops]
    kinds = {"int32": "int", "float32": "float"}
    for op in ops:
        fields = [(line[2], kinds.get(line[3], line[3])) for line in lines if line[:2] == ["field", op.op_type]]
        assert fields == [(f.name, f.kind) for f in op.fields], op.op_type
        (dtypes,) = [line[2:] for line in lines if line[:2] == ["dtypes", op.op_type]]
        assert tuple(dtypes) == op.tensorrt_dtypes, op.op_type
        results = {line[2]: line[3] for line in lines if line[:2] == ["probe", op.op_type]}
        for values in probes(op):
            expected = "accepted" if spec_accepts(op, values) else "refused"
            assert results[probe_text(values)] == expected, (op.op_type, values)
    print(proc.stdout.splitlines()[-1])


def test_static_plugin_library_registers_on_load(build_result, fake_trt_root):
    _require_trt_headers()
    if fake_trt_root is None or not (fake_trt_root / "lib" / "libnvinfer.so").is_file():
        pytest.skip("the stub libnvinfer could not be built here (g++ or CUDA headers missing, or a compile error)")
    assert build_result.plugin_static_library is not None, f"not built (see {build_result.log})"
    proc = subprocess.run([str(build_result.plugin_selftest), "--static", str(build_result.plugin_static_library),
                           str(fake_trt_root / "lib" / "libnvinfer.so")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    registered = re.findall(r"^registered (\S+) version (\S+) \(creator namespace (\S+)\)$", proc.stdout, re.M)
    ops = [name for name in spec.OPS if HAS_TRITON or name == spec.OP_TYPE]
    assert registered == [(f"{spec.PLUGIN_NAMESPACE}::{name}", spec.PLUGIN_VERSION, spec.PLUGIN_NAMESPACE)
                          for name in ops]


# ---- Python binding and build errors --------------------------------------------------------------


def test_binding_rejects_bad_arguments_before_loading_anything(monkeypatch):
    torch = pytest.importorskip("torch")

    def no_library(*_args, **_kwargs):
        raise AssertionError("the library must not be loaded for invalid arguments")

    monkeypatch.setattr(cuda_kernel, "load_kernel_library", no_library)
    table = torch.from_numpy(reference.relative_position_table(0, 8, 8))
    c2c, c2p = torch.zeros(2, 4, 4), torch.zeros(2, 4, 8)
    with pytest.raises(ValueError, match="CUDA tensor"):
        cuda_kernel.disentangled_attention(c2c, c2p, None, table)
    with pytest.raises(ValueError, match="at least one"):
        cuda_kernel.disentangled_attention(c2c, None, None, table)
    with pytest.raises(TypeError, match="torch.Tensor"):
        cuda_kernel.disentangled_attention(c2c.numpy(), c2p, None, table)


def test_missing_tools_are_one_line_errors(monkeypatch, tmp_path):
    monkeypatch.setattr(libraries, "find_cmake", lambda: None)
    with pytest.raises(libraries.PluginBuildError, match="cmake not found") as err:
        libraries.build(tmp_path)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(libraries, "find_cmake", lambda: "/usr/bin/cmake")
    monkeypatch.setattr(libraries, "find_nvcc", lambda: None)
    with pytest.raises(libraries.PluginBuildError, match="nvcc not found") as err:
        libraries.build(tmp_path)
    assert "\n" not in str(err.value)


def test_failed_cmake_step_is_a_one_line_error(monkeypatch, tmp_path):
    fake = tmp_path / "cmake"  # a cmake that fails like CMake does, so no real configure is needed
    fake.write_text("#!/bin/sh\necho '-- Configuring incomplete'\n"
                    "echo 'CMake Error at CMakeLists.txt:1 (x): boom' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(libraries, "find_cmake", lambda: str(fake))
    monkeypatch.setattr(libraries, "find_nvcc", lambda: "/usr/bin/true")
    with pytest.raises(libraries.PluginBuildError, match="cmake configure failed") as err:
        libraries.build(tmp_path / "b")
    message = str(err.value)
    assert "\n" not in message and "CMake Error" in message and "debertrt-build.log" in message
    assert "boom" in (tmp_path / "b" / "debertrt-build.log").read_text()


def test_source_hash_tracks_sources_and_options(monkeypatch, tmp_path):
    base = libraries.source_hash(compile_only=False)
    assert base == libraries.source_hash(compile_only=False)
    assert base != libraries.source_hash(compile_only=True)
    monkeypatch.setenv("DEBERTRT_CACHE", str(tmp_path))
    directory = libraries.default_build_dir()
    assert directory.parent == tmp_path / "plugins" and len(directory.name) == 16
    files = {p.name for p in libraries.source_files()}
    assert {"CMakeLists.txt", "disentangled_attention_kernel.cu", "disentangled_attention_plugin.cpp"} <= files


def test_the_package_ships_every_file_the_cmake_projects_read():
    """plugins/ and runtime/cpp/ are built from an installed package too: pyproject's package data must
    hold each of their files (FindTensorRT.cmake is reached from runtime/cpp/ as ../../plugins/cmake)."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dirs = {name: REPO / folder for name, folder in setuptools["package-dir"].items()}

    def owner(path: Path) -> tuple[str, Path]:
        """The package holding ``path`` (the deepest folder with an __init__.py) and its folder."""
        for name in sorted(setuptools["packages"], key=len, reverse=True):
            top = next(n for n in package_dirs if name == n or name.startswith(n + "."))
            folder = package_dirs[top].joinpath(*name[len(top):].split(".")[1:])
            if folder in path.parents:
                return name, folder
        raise AssertionError(f"{path} is in no package")

    runtime_cpp = sorted(p for p in (REPO / "runtime" / "cpp").iterdir() if p.is_file())
    for path in libraries.source_files() + runtime_cpp:
        name, folder = owner(path)
        relative = str(path.relative_to(folder))
        shipped = path.suffix == ".py" and path.parent == folder or any(
            fnmatch.fnmatch(relative, pattern) for pattern in setuptools["package-data"].get(name, ()))
        assert shipped, f"{path.relative_to(REPO)} is not in package {name}'s package data"
    assert (REPO / "runtime" / "cpp" / ".." / ".." / "plugins" / "cmake" / "FindTensorRT.cmake").is_file()


def test_bench_script_runs_from_a_bare_checkout_without_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: this checks the no-GPU exit")
    checkout = tmp_path / "checkout"
    for folder in ("core", "plugins", "scripts"):
        shutil.copytree(REPO / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__", "build"))
    shutil.copy(REPO / "pyproject.toml", checkout / "pyproject.toml")
    # Hide the installed (editable) package so the script's own shim is what imports kernel_check.
    code = ("import sys, runpy; "
            "sys.meta_path = [f for f in sys.meta_path if 'Editable' not in getattr(f, '__name__', type(f).__name__)]; "
            f"sys.argv = ['bench_kernel.py', '--skip-timing', '--json', {str(tmp_path / 'k.json')!r}]; "
            f"runpy.run_path({str(checkout / 'scripts' / 'bench_kernel.py')!r}, run_name='__main__')")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stderr
    assert "debertrt-shim" not in proc.stderr  # the shim was used without error
    assert not list(scratch.iterdir()), "the import shim was not cleaned up"
    assert (checkout / "plugins" / "reference.py").is_file()  # cleanup removed the link, not its target


def test_gpu_check_script_parses():
    if shutil.which("bash") is None:
        pytest.skip("bash not found")
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")], check=True)
