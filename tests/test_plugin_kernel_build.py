"""The plugin project builds and its libraries expose what they promise; CPU only.

- CMake + nvcc build ``libdebertrt_kernels.so`` (all five architectures) once per session; it
  exports the C entry point, which validates its arguments without touching a device;
- with TensorRT headers (``DEBERTRT_TRT_INCLUDE`` = an include dir, or ``TensorRT_ROOT`` = a
  prefix): the compile-only build of the plugin sources; ``libdebertrt_plugins.so`` exports
  ``getCreators``/``setLoggerFinder`` and needs no TensorRT symbol; the host self-test drives the
  creator and plugin; ``libdebertrt_plugins_static.so`` (linked against a stub libnvinfer built
  here) registers its creator under namespace ``debertrt`` when loaded;
- a NumPy emulation of the kernel's tiling (the .cu's index arithmetic, lane by lane) covers
  every output exactly once and reproduces the reference bit for bit;
- the Python binding's argument checks and one-line build errors.

Anything absent (cmake, nvcc, TensorRT headers, g++, a GPU) is a skip with the reason.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from debertrt.plugins import cuda_kernel, libraries, reference, spec

# its module/session fixtures are costly: one xdist worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_plugin_kernel_build")

REPO = Path(__file__).resolve().parent.parent
PLUGIN_DIR = Path(cuda_kernel.__file__).resolve().parent / "disentangled_attention"


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
        stub = PLUGIN_DIR / "testing" / "nvinfer_stub.cpp"
        proc = subprocess.run(["g++", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
                               "-Wno-deprecated-declarations", "-isystem", str(include), "-isystem", str(cuda_include),
                               str(stub), "-o", str(root / "lib" / "libnvinfer.so")], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"\nstub libnvinfer not built: {proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else '?'}")
    return root


@pytest.fixture(scope="module")
def build_result(tmp_path_factory, fake_trt_root) -> libraries.BuildResult:
    """One configure + build of the whole project (five architectures), shared by this module."""
    _require_build_tools()
    build_dir = tmp_path_factory.mktemp("plugins-build")
    t0 = time.perf_counter()
    result = libraries.build(build_dir, tensorrt_root=fake_trt_root)
    print(f"\ncmake configure + build of plugins/ ({libraries.DEFAULT_CUDA_ARCHITECTURES}, "
          f"TensorRT headers {'found' if fake_trt_root else 'absent'}): {time.perf_counter() - t0:.1f} s")
    return result


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


# ---- TensorRT plugin -----------------------------------------------------------------------------


def test_plugin_compile_only_against_tensorrt_headers(tmp_path):
    include = _require_trt_headers()
    _require_build_tools()
    result = libraries.build(tmp_path / "compile-only", tensorrt_root=include.parent, compile_only=True,
                               targets=["debertrt_plugin_objects", "debertrt_plugin_static_objects"])
    objects = list((tmp_path / "compile-only").rglob("disentangled_attention_plugin.cpp.o"))
    assert len(objects) == 2, objects  # the loadLibrary flavor and the static-registration flavor
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


def test_plugin_host_selftest(build_result):
    _require_trt_headers()
    assert build_result.plugin_selftest is not None and build_result.plugin_library is not None
    proc = subprocess.run([str(build_result.plugin_selftest), str(build_result.plugin_library)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    values = dict(line.split(" ", 1) for line in lines if line.startswith(("name ", "version ", "namespace ")))
    assert values == {"name": spec.OP_TYPE, "version": spec.PLUGIN_VERSION, "namespace": spec.PLUGIN_NAMESPACE}
    fields = [tuple(line.split()[1:]) for line in lines if line.startswith("field ")]
    kinds = {"int32": "int", "float32": "float"}
    assert [(name, kinds[t]) for name, t in fields] == [(f.name, f.kind) for f in spec.FIELDS]
    assert re.search(r"^PASS: \d+ checks, 0 failed$", proc.stdout, re.M)


def test_static_plugin_library_registers_on_load(build_result, fake_trt_root):
    _require_trt_headers()
    if fake_trt_root is None or not (fake_trt_root / "lib" / "libnvinfer.so").is_file():
        pytest.skip("the stub libnvinfer could not be built here (g++ or CUDA headers missing, or a compile error)")
    assert build_result.plugin_static_library is not None, f"not built (see {build_result.log})"
    proc = subprocess.run([str(build_result.plugin_selftest), "--static", str(build_result.plugin_static_library),
                           str(fake_trt_root / "lib" / "libnvinfer.so")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"registered {spec.PLUGIN_NAMESPACE}::{spec.OP_TYPE} version {spec.PLUGIN_VERSION}" in proc.stdout


# ---- the kernel's tiling, emulated ---------------------------------------------------------------

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


def test_bench_script_runs_from_a_bare_checkout_without_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: this checks the no-GPU exit")
    checkout = tmp_path / "checkout"
    for folder in ("core", "plugins", "scripts"):
        shutil.copytree(REPO / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__", "build"))
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
