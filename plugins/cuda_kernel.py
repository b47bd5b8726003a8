"""Build, locate and call the DisentangledAttention CUDA kernel and TensorRT plugin libraries.

The C++/CUDA sources live beside this file (``CMakeLists.txt``, ``disentangled_attention/``).
:func:`build` runs CMake into a build directory; without one it uses a cache directory keyed
by a hash of the sources and options (``<debertrt cache>/plugins/<hash>``, see
``debertrt.core.artifacts.cache_root``), so an unchanged tree builds once.

:func:`disentangled_attention` calls the kernel's C entry point through ctypes on torch CUDA
tensors; it is what tests and benchmarks use where TensorRT is absent. The NumPy oracle stays
in :mod:`debertrt.plugins.reference`.

Libraries:

- ``libdebertrt_kernels.so``: the kernel, C entry point ``debertrt_disentangled_attention``.
- ``libdebertrt_plugins.so``: the TensorRT plugin for ``IPluginRegistry::loadLibrary``
  (``getCreators``/``setLoggerFinder``; no TensorRT library needed to build it).
- ``libdebertrt_plugins_static.so``: the same plugin registering itself when loaded
  (``ctypes.CDLL``, ``polygraphy --plugins``, ``trtexec --staticPlugins``); needs libnvinfer.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from debertrt.core.artifacts import cache_root

KERNEL_LIBRARY = "libdebertrt_kernels.so"
PLUGIN_LIBRARY = "libdebertrt_plugins.so"
PLUGIN_STATIC_LIBRARY = "libdebertrt_plugins_static.so"
KERNEL_SELFTEST = "debertrt_kernel_selftest"
PLUGIN_SELFTEST = "debertrt_plugin_selftest"
ENTRY_POINT = "debertrt_disentangled_attention"

#: DEBERTRT_KERNEL_ABI_VERSION of disentangled_attention_kernel.cuh this binding speaks.
ABI_VERSION = 1
#: DEBERTRT_DTYPE_* codes of the C entry point.
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}
#: SASS for sm_80/86/89/90 and compute_90 PTX (CMake CUDA_ARCHITECTURES syntax).
DEFAULT_CUDA_ARCHITECTURES = "80-real;86-real;89-real;90-real;90-virtual"

_LOG_NAME = "debertrt-build.log"


class PluginBuildError(RuntimeError):
    """A build tool is missing or CMake failed; the message is one line."""


class KernelError(RuntimeError):
    """The kernel library refused the arguments or the launch failed."""


# ---- sources and build directories ----------------------------------------------------------


def source_dir() -> Path:
    """The CMake project: ``plugins/`` in a checkout, the package directory when installed."""
    return Path(__file__).resolve().parent


def source_files() -> list[Path]:
    root = source_dir()
    files = [root / "CMakeLists.txt"]
    files += sorted(p for p in (root / "disentangled_attention").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts)
    return files


def source_hash(**options) -> str:
    """16 hex digits over every source file and the build options."""
    digest = hashlib.sha256()
    root = source_dir()
    for path in source_files():
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    for key in sorted(options):
        digest.update(f"{key}={options[key]!r}\n".encode())
    return digest.hexdigest()[:16]


def build_cache() -> Path:
    return cache_root() / "plugins"


def find_nvcc() -> str | None:
    """nvcc from ``$CUDACXX``, ``PATH``, ``$CUDA_HOME``/``$CUDA_PATH`` or /usr/local/cuda."""
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(str(Path(os.environ[var]) / "bin" / "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_cuda_include_dir() -> Path | None:
    """The CUDA toolkit's include directory (``cuda_runtime_api.h``): beside nvcc, under
    ``$CUDA_HOME``/``$CUDA_PATH`` or /usr/local/cuda."""
    nvcc = find_nvcc()
    candidates = [Path(nvcc).resolve().parent.parent / "include"] if nvcc else []
    candidates += [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates.append(Path("/usr/local/cuda/include"))
    return next((p for p in candidates if (p / "cuda_runtime_api.h").is_file()), None)


def find_cmake() -> str | None:
    return shutil.which("cmake")


def tensorrt_root_from_env() -> str | None:
    """``$TensorRT_ROOT`` (a prefix), or the parent of ``$DEBERTRT_TRT_INCLUDE`` (an include dir)."""
    if os.environ.get("TensorRT_ROOT"):
        return os.environ["TensorRT_ROOT"]
    include = os.environ.get("DEBERTRT_TRT_INCLUDE")
    if include:
        return str(Path(include).resolve().parent)
    return None


@dataclass(frozen=True)
class BuildResult:
    build_dir: Path
    kernel_library: Path | None
    plugin_library: Path | None
    plugin_static_library: Path | None
    kernel_selftest: Path | None
    plugin_selftest: Path | None
    log: Path

    @classmethod
    def scan(cls, build_dir: Path) -> "BuildResult":
        """What the current configuration builds (``debertrt_outputs.txt``) and exists."""
        manifest = build_dir / "debertrt_outputs.txt"
        current = set(manifest.read_text().split()) if manifest.is_file() else None

        def found(name: str) -> Path | None:
            path = build_dir / name
            return path if path.is_file() and (current is None or name in current) else None

        return cls(build_dir, found(KERNEL_LIBRARY), found(PLUGIN_LIBRARY), found(PLUGIN_STATIC_LIBRARY),
                   found(KERNEL_SELFTEST), found(PLUGIN_SELFTEST), build_dir / _LOG_NAME)


def default_build_dir(*, tensorrt_root: str | os.PathLike | None = None, compile_only: bool = False,
                      cuda_architectures: str = DEFAULT_CUDA_ARCHITECTURES) -> Path:
    key = source_hash(tensorrt_root=str(tensorrt_root or ""), compile_only=compile_only,
                      cuda_architectures=cuda_architectures)
    return build_cache() / key


_build_lock = threading.Lock()


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def build(build_dir: str | os.PathLike | None = None, *, tensorrt_root: str | os.PathLike | None = None,
          compile_only: bool = False, cuda_architectures: str = DEFAULT_CUDA_ARCHITECTURES,
          targets: list[str] | None = None, jobs: int | None = None, werror: bool = True,
          extra_cmake_args: list[str] | None = None) -> BuildResult:
    """Configure and build the plugin project with CMake; returns what was built.

    ``tensorrt_root``: a TensorRT prefix (``include/``, ``lib/``); headers alone build
    ``libdebertrt_plugins.so``, a libnvinfer also ``libdebertrt_plugins_static.so``.
    ``compile_only``: only compile the plugin sources (``DEBERTRT_TRT_COMPILE_ONLY``).
    Raises :class:`PluginBuildError` (one line) when cmake or nvcc is missing or a step fails;
    the full output is in ``<build_dir>/debertrt-build.log``.
    """
    cmake = find_cmake()
    if cmake is None:
        raise PluginBuildError("cmake not found on PATH: install CMake >= 3.18 to build the debertrt plugin libraries")
    nvcc = find_nvcc()
    if nvcc is None:
        raise PluginBuildError("nvcc not found (CUDACXX, PATH, CUDA_HOME or /usr/local/cuda/bin): "
                               "the CUDA toolkit is needed to build the debertrt kernel library")
    if build_dir is None:
        build_dir = default_build_dir(tensorrt_root=tensorrt_root, compile_only=compile_only,
                                      cuda_architectures=cuda_architectures)
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    log_path = build_dir / _LOG_NAME

    configure = [cmake, "-S", str(source_dir()), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DDEBERTRT_CUDA_ARCHITECTURES={cuda_architectures}",
                 f"-DDEBERTRT_TRT_COMPILE_ONLY={'ON' if compile_only else 'OFF'}",
                 f"-DDEBERTRT_WERROR={'ON' if werror else 'OFF'}",
                 f"-DTensorRT_ROOT={Path(tensorrt_root).resolve() if tensorrt_root else ''}",
                 # Re-find TensorRT on every configure: a reused build dir may have another root cached.
                 "-UTensorRT_INCLUDE_DIR", "-UTensorRT_nvinfer_LIBRARY"]
    configure += list(extra_cmake_args or [])
    compile_cmd = [cmake, "--build", str(build_dir), "--parallel", str(jobs or os.cpu_count() or 2)]
    for target in targets or []:
        compile_cmd += ["--target", target]

    import fcntl  # POSIX only, like the libraries themselves

    with _build_lock, open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per directory across processes
        with open(log_path, "w") as log:
            for step, cmd in (("configure", configure), ("build", compile_cmd)):
                log.write("$ " + " ".join(cmd) + "\n")
                log.flush()
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                log.write(proc.stdout)
                log.flush()
                if proc.returncode != 0:
                    raise PluginBuildError(f"cmake {step} failed in {build_dir} ({_last_error_line(proc.stdout)}); "
                                           f"full log: {log_path}")
    return BuildResult.scan(build_dir)


def find_kernel_library(build_dir: str | os.PathLike | None = None, *, build_if_missing: bool = True) -> Path:
    """Path of ``libdebertrt_kernels.so``: ``$DEBERTRT_KERNEL_LIBRARY``, else ``build_dir``
    (built incrementally), else the source-hash cache directory (built once)."""
    override = os.environ.get("DEBERTRT_KERNEL_LIBRARY")
    if override:
        path = Path(override)
        if not path.is_file():
            raise PluginBuildError(f"DEBERTRT_KERNEL_LIBRARY={override} does not exist")
        return path
    explicit = build_dir is not None
    directory = Path(build_dir) if explicit else default_build_dir()
    library = directory / KERNEL_LIBRARY
    if library.is_file() and not explicit:
        return library
    if not build_if_missing:
        if library.is_file():
            return library
        raise PluginBuildError(f"{KERNEL_LIBRARY} not found in {directory} "
                               "(build it with debertrt.plugins.cuda_kernel.build)")
    result = build(directory, targets=["debertrt_kernels"])
    if result.kernel_library is None:
        raise PluginBuildError(f"the build in {directory} produced no {KERNEL_LIBRARY} (see {result.log})")
    return result.kernel_library


def find_plugin_library(tensorrt_root: str | os.PathLike | None = None, build_dir: str | os.PathLike | None = None,
                        *, static: bool = False, build_if_missing: bool = True) -> Path:
    """Path of ``libdebertrt_plugins.so`` (``static=False``, for ``loadLibrary``) or
    ``libdebertrt_plugins_static.so`` (``static=True``, registers on load; needs libnvinfer).
    ``$DEBERTRT_PLUGIN_LIBRARY`` overrides the former. ``tensorrt_root`` defaults to
    ``$TensorRT_ROOT`` / ``$DEBERTRT_TRT_INCLUDE``."""
    name = PLUGIN_STATIC_LIBRARY if static else PLUGIN_LIBRARY
    override = os.environ.get("DEBERTRT_PLUGIN_STATIC_LIBRARY" if static else "DEBERTRT_PLUGIN_LIBRARY")
    if override:
        if not Path(override).is_file():
            raise PluginBuildError(f"{override} does not exist")
        return Path(override)
    tensorrt_root = tensorrt_root or tensorrt_root_from_env()
    explicit = build_dir is not None
    directory = Path(build_dir) if explicit else default_build_dir(tensorrt_root=tensorrt_root)
    library = directory / name
    if library.is_file() and (not explicit or not build_if_missing):
        return library
    if not build_if_missing:
        raise PluginBuildError(f"{name} not found in {directory}")
    if tensorrt_root is None:
        raise PluginBuildError(f"{name} needs the TensorRT headers: set TensorRT_ROOT (or DEBERTRT_TRT_INCLUDE) "
                               "or pass tensorrt_root")
    result = build(directory, tensorrt_root=tensorrt_root)
    path = result.plugin_static_library if static else result.plugin_library
    if path is None:
        what = "libnvinfer" if static else "NvInferRuntime.h"
        raise PluginBuildError(f"no {name} was built in {directory}: {what} not found under {tensorrt_root} "
                               f"(see {result.log})")
    return path


# ---- ctypes binding --------------------------------------------------------------------------

_libraries: dict[str, ctypes.CDLL] = {}
_libraries_lock = threading.Lock()


def load_kernel_library(path: str | os.PathLike | None = None) -> ctypes.CDLL:
    """ctypes handle on the kernel library (located or built by :func:`find_kernel_library`)."""
    path = Path(path) if path is not None else find_kernel_library()
    key = str(path.resolve())
    with _libraries_lock:
        if key in _libraries:
            return _libraries[key]
        lib = ctypes.CDLL(key)
        try:
            entry = getattr(lib, ENTRY_POINT)
        except AttributeError:
            raise KernelError(f"{path} does not export {ENTRY_POINT}") from None
        entry.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_float, ctypes.c_void_p]
        entry.restype = ctypes.c_int
        lib.debertrt_kernel_abi_version.argtypes = []
        lib.debertrt_kernel_abi_version.restype = ctypes.c_int
        lib.debertrt_error_string.argtypes = [ctypes.c_int]
        lib.debertrt_error_string.restype = ctypes.c_char_p
        abi = lib.debertrt_kernel_abi_version()
        if abi != ABI_VERSION:
            raise KernelError(f"{path} speaks kernel ABI {abi}, this binding speaks {ABI_VERSION}: rebuild it")
        _libraries[key] = lib
        return lib


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImportError("debertrt.plugins.cuda_kernel.disentangled_attention needs PyTorch "
                          "(pip install torch)") from None
    return torch


def _check_inputs(torch, c2c, c2p, p2c, rel_table, out):
    """Validate like the kernel's contract; returns (rows, sq, sk, span)."""
    if not isinstance(c2c, torch.Tensor):
        raise TypeError(f"c2c must be a torch.Tensor, got {type(c2c).__name__}")
    if c2p is None and p2c is None:
        raise ValueError("DisentangledAttention needs at least one of c2p and p2c")
    if rel_table is None:
        raise TypeError("rel_table must be a 1-D int32 torch tensor (reference.relative_position_table)")
    named = [("c2c", c2c), ("c2p", c2p), ("p2c", p2c), ("rel_table", rel_table), ("out", out)]
    for name, tensor in named:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device.type != "cuda":
            raise ValueError(f"{name} must be a CUDA tensor, got one on {tensor.device}")
        if tensor.device != c2c.device:
            raise ValueError(f"{name} is on {tensor.device} but c2c is on {c2c.device}")
        if not tensor.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous())")
    if c2c.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"c2c must be float32, float16 or bfloat16, got {c2c.dtype}")
    for name, tensor in (("c2p", c2p), ("p2c", p2c), ("out", out)):
        if tensor is not None and tensor.dtype != c2c.dtype:
            raise TypeError(f"{name} is {tensor.dtype} but c2c is {c2c.dtype}: all float tensors must share one dtype")
    if rel_table.dtype != torch.int32 or rel_table.dim() != 1 or rel_table.numel() < 1:
        raise TypeError("rel_table must be a non-empty 1-D int32 tensor, "
                        f"got {rel_table.dtype} {tuple(rel_table.shape)}")
    if c2c.dim() < 2:
        raise ValueError(f"c2c must be [..., Sq, Sk], got shape {tuple(c2c.shape)}")
    lead, (sq, sk) = tuple(c2c.shape[:-2]), tuple(c2c.shape[-2:])
    width = None
    for name, tensor, rows in (("c2p", c2p, sq), ("p2c", p2c, sk)):
        if tensor is None:
            continue
        if tensor.dim() != c2c.dim() or tuple(tensor.shape[:-1]) != lead + (rows,):
            want = "[..., Sq, 2*span]" if name == "c2p" else "[..., Sk, 2*span]"
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, want {want} with c2c {tuple(c2c.shape)}")
        w = tensor.shape[-1]
        if w < 2 or w % 2:
            raise ValueError(f"{name} needs an even last dimension >= 2 (2*span), got {w}")
        if width is not None and w != width:
            raise ValueError(f"c2p and p2c last dimensions differ ({width} vs {w})")
        width = w
    smax = (rel_table.numel() + 1) // 2
    if max(sq, sk) > smax:
        raise ValueError(f"sequence length {max(sq, sk)} exceeds the relative-position table ({smax})")
    if out is not None:
        if tuple(out.shape) != tuple(c2c.shape):
            raise ValueError(f"out has shape {tuple(out.shape)}, want c2c's {tuple(c2c.shape)}")
        for name, tensor in (("c2p", c2p), ("p2c", p2c)):
            if tensor is not None and tensor.numel() and out.numel() and _overlaps(out, tensor):
                raise ValueError(f"out must not overlap {name} (out may be c2c itself)")
        if out.numel() and _overlaps(out, c2c) and out.data_ptr() != c2c.data_ptr():
            raise ValueError("out partially overlaps c2c (out may be c2c itself, nothing else)")
    limit = 2**31 - 1
    if sq > limit or sk > limit or width // 2 > limit:
        raise ValueError("a dimension exceeds the kernel's int32 range")
    return math.prod(lead), sq, sk, width // 2


def _overlaps(a, b) -> bool:
    a0, a1 = a.data_ptr(), a.data_ptr() + a.numel() * a.element_size()
    b0, b1 = b.data_ptr(), b.data_ptr() + b.numel() * b.element_size()
    return a0 < b1 and b0 < a1


def disentangled_attention(c2c, c2p, p2c, rel_table, pos_scale: float = 1.0, out=None, *, library=None, stream=None):
    """``out = c2c + pos_scale * (c2p[..., i, delta] + p2c[..., j, delta])`` on the GPU.

    Tensors: torch CUDA, contiguous, on one device; c2c/c2p/p2c/out float32, float16 or
    bfloat16 (one dtype); rel_table int32 ``[2*Smax - 1]`` (see ``reference.relative_position_table``).
    c2p or p2c may be None. ``out`` defaults to a new tensor; it may be ``c2c`` (in place).
    ``library``: a path or ctypes handle of libdebertrt_kernels.so (default: located/built).
    ``stream``: a ``torch.cuda.Stream`` or raw handle (default: the current stream).
    Raises TypeError/ValueError on bad arguments, :class:`KernelError` if the launch fails.
    """
    torch = _import_torch()
    rows, sq, sk, span = _check_inputs(torch, c2c, c2p, p2c, rel_table, out)
    if out is None:
        out = torch.empty_like(c2c)
    if rows == 0 or sq == 0 or sk == 0:
        return out
    lib = library if isinstance(library, ctypes.CDLL) else load_kernel_library(library)
    code = DTYPE_CODES[str(c2c.dtype).replace("torch.", "")]
    with torch.cuda.device(c2c.device):
        if stream is None:
            handle = torch.cuda.current_stream(c2c.device).cuda_stream
        else:
            handle = getattr(stream, "cuda_stream", stream)
        rc = lib.debertrt_disentangled_attention(
            code, c2c.data_ptr(), c2p.data_ptr() if c2p is not None else None,
            p2c.data_ptr() if p2c is not None else None, rel_table.data_ptr(), rel_table.numel(), out.data_ptr(),
            rows, sq, sk, span, float(pos_scale), handle)
    if rc != 0:
        message = lib.debertrt_error_string(rc)
        raise KernelError(f"{ENTRY_POINT} failed: {message.decode() if message else 'unknown error'} (cudaError {rc})")
    return out
