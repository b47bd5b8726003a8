"""Build and locate the C++/CUDA libraries: the kernels and the TensorRT plugins.

The C++/CUDA sources live beside this file (``CMakeLists.txt``, ``cmake/``, ``common/``,
``disentangled_attention/``, ``flash/``, ``testing/``).
:func:`build` runs CMake into a build directory; without one it uses a cache directory keyed
by a hash of the sources and options (``<debertrt cache>/plugins/<hash>``, see
``debertrt.core.artifacts.cache_root``), so an unchanged tree builds once.

``cuda_kernel`` calls the kernel's C entry point through ctypes.

Libraries:

- ``libdebertrt_kernels.so``: the gather kernel, C entry point ``debertrt_disentangled_attention``.
- ``libdebertrt_flash.so``: the fused kernel's cubins (compiled by Triton during the build, with
  this Python) and their launcher, C entry point ``debertrt_flash_attention``.
- ``libdebertrt_plugins.so``: the TensorRT plugins of both ops for ``IPluginRegistry::loadLibrary``
  (``getCreators``/``setLoggerFinder``; no TensorRT library needed to build it).
- ``libdebertrt_plugins_static.so``: the same plugins registering themselves when loaded
  (``ctypes.CDLL``, ``polygraphy --plugins``, ``trtexec --staticPlugins``); needs libnvinfer.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from debertrt.core.artifacts import cache_root

KERNEL_LIBRARY = "libdebertrt_kernels.so"
FLASH_LIBRARY = "libdebertrt_flash.so"
PLUGIN_LIBRARY = "libdebertrt_plugins.so"
PLUGIN_STATIC_LIBRARY = "libdebertrt_plugins_static.so"
KERNEL_SELFTEST = "debertrt_kernel_selftest"
PLUGIN_SELFTEST = "debertrt_plugin_selftest"

#: SASS for sm_80/86/89/90 and compute_90 PTX (CMake CUDA_ARCHITECTURES syntax).
DEFAULT_CUDA_ARCHITECTURES = "80-real;86-real;89-real;90-real;90-virtual"


@dataclass(frozen=True)
class FlashVariants:
    """Which fused-kernel cubins a build compiles: SASS targets x I/O dtypes x head-dim tiles (each
    tile serves head dims up to it). The default is what ``plugins/CMakeLists.txt`` defaults to."""

    archs: tuple[int, ...] = (80, 90)
    dtypes: tuple[str, ...] = ("float16", "bfloat16")
    head_dims: tuple[int, ...] = (32, 64, 128)

    def cmake_args(self) -> list[str]:
        def joined(values):
            return ";".join(str(v) for v in values)

        return [f"-DDEBERTRT_FLASH_ARCHS={joined(self.archs)}", f"-DDEBERTRT_FLASH_DTYPES={joined(self.dtypes)}",
                f"-DDEBERTRT_FLASH_HEAD_DIMS={joined(self.head_dims)}"]


DEFAULT_FLASH_VARIANTS = FlashVariants()

_LOG_NAME = "debertrt-build.log"


class PluginBuildError(RuntimeError):
    """A build tool is missing or CMake failed; the message is one line."""


# ---- sources and build directories ----------------------------------------------------------


def source_dir() -> Path:
    """The CMake project: ``plugins/`` in a checkout, the package directory when installed."""
    return Path(__file__).resolve().parent


def source_files() -> list[Path]:
    """Everything the CMake project reads: its C++/CUDA/CMake files and the Python the fused kernel's
    cubins are generated from."""
    root = source_dir()
    files = [root / "CMakeLists.txt", root / "spec.py", root / "reference.py"]
    for folder in ("cmake", "common", "disentangled_attention", "flash", "testing"):
        files += sorted(p for p in (root / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
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
    flash_library: Path | None
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

        return cls(build_dir, found(KERNEL_LIBRARY), found(FLASH_LIBRARY), found(PLUGIN_LIBRARY),
                   found(PLUGIN_STATIC_LIBRARY), found(KERNEL_SELFTEST), found(PLUGIN_SELFTEST), build_dir / _LOG_NAME)


def default_build_dir(*, tensorrt_root: str | os.PathLike | None = None, compile_only: bool = False,
                      cuda_architectures: str = DEFAULT_CUDA_ARCHITECTURES,
                      flash: FlashVariants = DEFAULT_FLASH_VARIANTS) -> Path:
    key = source_hash(tensorrt_root=str(tensorrt_root or ""), compile_only=compile_only,
                      cuda_architectures=cuda_architectures, flash=flash, python=sys.executable)
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
          flash: FlashVariants = DEFAULT_FLASH_VARIANTS, targets: list[str] | None = None, jobs: int | None = None,
          werror: bool = True, extra_cmake_args: list[str] | None = None) -> BuildResult:
    """Configure and build the plugin project with CMake; returns what was built.

    ``tensorrt_root``: a TensorRT prefix (``include/``, ``lib/``); headers alone build
    ``libdebertrt_plugins.so``, a libnvinfer also ``libdebertrt_plugins_static.so``.
    ``compile_only``: only compile the plugin sources (``DEBERTRT_TRT_COMPILE_ONLY``).
    ``flash``: the fused kernel's cubins, compiled by Triton with this Python (where it has triton
    and torch; without them the libraries hold the gather op only, with a CMake warning in the log).
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
                 f"-DPython3_EXECUTABLE={sys.executable}", *flash.cmake_args(),
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


_loaded: dict[tuple, ctypes.CDLL] = {}
_loaded_lock = threading.Lock()


def load_library(path: Path, bind: Callable[[ctypes.CDLL, Path], None]) -> ctypes.CDLL:
    """ctypes handle on the library at ``path``, loaded once per resolved path and binding.

    ``bind(lib, path)`` declares the entry points and checks the ABI; when it raises, the library
    is not kept and the next call tries again.
    """
    key = (bind, str(path.resolve()))
    with _loaded_lock:
        if key not in _loaded:
            lib = ctypes.CDLL(key[1])
            bind(lib, path)
            _loaded[key] = lib
        return _loaded[key]


def _find_kernel(name: str, env: str, target: str, attribute: str, build_dir, build_if_missing: bool) -> Path:
    """A kernel library: ``$<env>``, else ``build_dir`` (built incrementally), else the source-hash cache
    directory (built once)."""
    override = os.environ.get(env)
    if override:
        path = Path(override)
        if not path.is_file():
            raise PluginBuildError(f"{env}={override} does not exist")
        return path
    explicit = build_dir is not None
    directory = Path(build_dir) if explicit else default_build_dir()
    library = directory / name
    if library.is_file() and not explicit:
        return library
    if not build_if_missing:
        if library.is_file():
            return library
        raise PluginBuildError(f"{name} not found in {directory} (build it with debertrt.plugins.libraries.build)")
    result = build(directory, targets=[target])
    if getattr(result, attribute) is None:
        raise PluginBuildError(f"the build in {directory} produced no {name} (see {result.log})")
    return getattr(result, attribute)


def find_kernel_library(build_dir: str | os.PathLike | None = None, *, build_if_missing: bool = True) -> Path:
    """Path of ``libdebertrt_kernels.so``: ``$DEBERTRT_KERNEL_LIBRARY``, else ``build_dir``
    (built incrementally), else the source-hash cache directory (built once)."""
    return _find_kernel(KERNEL_LIBRARY, "DEBERTRT_KERNEL_LIBRARY", "debertrt_kernels", "kernel_library", build_dir,
                        build_if_missing)


def find_flash_library(build_dir: str | os.PathLike | None = None, *, build_if_missing: bool = True) -> Path:
    """Path of ``libdebertrt_flash.so``, found as :func:`find_kernel_library` finds its library
    (``$DEBERTRT_FLASH_LIBRARY`` overrides); building it needs triton and torch in this Python."""
    return _find_kernel(FLASH_LIBRARY, "DEBERTRT_FLASH_LIBRARY", "debertrt_flash", "flash_library", build_dir,
                        build_if_missing)


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
