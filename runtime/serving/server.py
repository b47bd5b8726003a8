"""Start and stop a local Triton Inference Server on a model repository.

The server comes from the PyPI wheel ``nvidia-pytriton`` (``pip install 'debertrt[serve]'``),
which carries a ``tritonserver`` binary, the Python backend and one backend stub per Python
version; or from a Triton installation given with ``tritonserver=`` (for example
``/opt/tritonserver/bin/tritonserver`` in NVIDIA's containers, whose backends lie beside it).

For the wheel, the Python backend directory Triton loads is assembled once under
``$DEBERTRT_CACHE`` from the wheel's backend library and the stub for the running Python
(the wheel keeps the stubs apart, one per version); the wheel's bundled libraries are put
on ``LD_LIBRARY_PATH``. Python-backend models get their packages from the environment
their ``EXECUTION_ENV_PATH`` names (``pyenv.ensure_env``); ``serve`` makes that environment
again when it is this interpreter's and has gone missing.

The server listens on loopback by default, runs in its own process group with a Python
backend shared-memory prefix of its own, dies with its parent (``PR_SET_PDEATHSIG``), and
``stop`` ends the stub processes and removes the shared memory a killed server left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from debertrt.core.errors import DebertrtError

from . import pyenv

INSTALL_HINT = "pip install 'debertrt[serve]' (the nvidia-pytriton wheel carries tritonserver)"
STUB_NAME = "triton_python_backend_stub"
PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
# What tritonserver logs as errors on every machine without a GPU: not why it failed.
NO_GPU_NOISE = re.compile(r"CUDA driver version is insufficient|CudaDriverHelper|NVML|DCGM|unable to create stream")
ENV_LINE = re.compile(r'key:\s*"EXECUTION_ENV_PATH"\s*value\s*:?\s*\{\s*string_value:\s*"([^"]*)"')


@dataclass(frozen=True)
class Distribution:
    """Where a tritonserver binary, its backends and its bundled libraries are."""

    binary: Path
    backends: Path
    libraries: tuple[Path, ...] = ()


def find_distribution(tritonserver: str | os.PathLike | None = None) -> Distribution:
    """``tritonserver`` (a binary with ``../backends`` beside it) or the nvidia-pytriton wheel's."""
    if tritonserver:
        binary = Path(tritonserver)
        if not binary.is_file():
            raise DebertrtError(f"tritonserver {str(binary)!r} not found: give the binary's path or {INSTALL_HINT}")
        backends = binary.resolve().parent.parent / "backends"
        if not (backends / "python").is_dir():
            raise DebertrtError(f"{backends}/python not found beside {binary}: a Triton installation keeps its "
                                f"backends in <root>/backends")
        return Distribution(binary, backends)
    found = importlib.util.find_spec("pytriton")  # locates the package without importing it
    if found is None or not found.submodule_search_locations:
        raise DebertrtError(f"no tritonserver: {INSTALL_HINT}, or pass the path of a tritonserver binary")
    package = Path(list(found.submodule_search_locations)[0])
    root = package / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise DebertrtError(f"{binary} not found: reinstall nvidia-pytriton ({INSTALL_HINT})")
    return Distribution(binary, _wheel_backends(root), (package.parent / "nvidia_pytriton.libs",))


def _wheel_backends(root: Path) -> Path:
    """A backends directory with the wheel's Python backend and the stub for this Python (made once)."""
    version = pyenv.python_version()
    stub = root / "python_backend_stubs" / version / STUB_NAME
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").iterdir() if p.is_dir())
        raise DebertrtError(f"nvidia-pytriton has Python backend stubs for Python {', '.join(have)}, not {version}: "
                            f"run debertrt with one of those, or use a Triton container")
    sources = [root / "backends" / "python" / f for f in PYTHON_BACKEND_FILES] + [stub]
    digest = hashlib.sha256("\n".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sources).encode())
    backends = pyenv.cache_root() / "triton-backends" / digest.hexdigest()[:12]
    python = backends / "python"
    if not (python / STUB_NAME).is_file():
        backends.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".python.", dir=backends))
        try:
            for source in sources:
                shutil.copy2(source, tmp / source.name)
            with contextlib.suppress(OSError):  # another process may have put its copy in place first
                os.rename(tmp, python)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return backends


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def prepare_environments(repository: Path) -> list[Path]:
    """Check every EXECUTION_ENV_PATH of the repository's models; make this interpreter's
    environment again where it is the one named and has gone missing."""
    envs = []
    for config in sorted(repository.glob("*/config.pbtxt")):
        for value in ENV_LINE.findall(config.read_text()):
            path = Path(value.replace("$$TRITON_MODEL_DIRECTORY", str(config.parent)))
            if not path.exists() and path == pyenv.default_env_path():
                pyenv.ensure_env(path)
            if not path.exists():
                raise DebertrtError(f"{config.parent.name}: EXECUTION_ENV_PATH {value} does not exist: export again "
                                    f"with --python-env auto (this Python's packages) or give an existing environment")
            envs.append(path)
    if envs:
        pyenv.check_stub_python()
    return envs


def stub_processes(shm_prefix: str) -> list[int]:
    """PIDs of Python-backend stubs started by the server whose shared-memory prefix is ``shm_prefix``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(STUB_NAME.encode()) and any(a.startswith(shm_prefix.encode()) for a in argv[1:]):
            pids.append(int(proc.name))
    return pids


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no server outlives the process that started it


@dataclass
class TritonServer:
    """``with TritonServer(repo) as server:`` starts tritonserver on free loopback ports and waits
    until every model is ready; leaving the block stops it."""

    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    tritonserver: str | os.PathLike | None = None
    log_file: Path | None = None
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self):
        self.repository = Path(self.repository).resolve()
        if not self.repository.is_dir() or not any(self.repository.glob("*/config.pbtxt")):
            raise DebertrtError(f"{self.repository} is not a model repository (no <model>/config.pbtxt): "
                                f"write one with debertrt export-triton")
        for attr in ("http_port", "grpc_port", "metrics_port"):
            if not getattr(self, attr):
                setattr(self, attr, free_port(self.host))

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self, distribution: Distribution) -> list[str]:
        self._shm_prefix = f"debertrt{os.getpid()}_{int(time.time() * 1000) % 10**8}_"
        return [str(distribution.binary), f"--model-repository={self.repository}",
                f"--backend-directory={distribution.backends}",
                f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
                f"--http-address={self.host}", f"--http-port={self.http_port}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false", "--exit-on-error=true", f"--log-verbose={self.log_verbose}",
                *self.extra_args]

    def start(self, timeout: float = 180.0) -> "TritonServer":
        if self.running:
            return self
        distribution = find_distribution(self.tritonserver)
        prepare_environments(self.repository)
        env = dict(os.environ)
        paths = [str(p) for p in distribution.libraries] + [p for p in [env.get("LD_LIBRARY_PATH")] if p]
        if paths:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
        log = open(self.log_file, "ab") if self.log_file else None
        try:
            self.process = subprocess.Popen(self.command(distribution), env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT if log else None,
                                            start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            if log:
                log.close()
        self._wait_ready(timeout)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                code = self.process.returncode
                self._cleanup()
                raise DebertrtError(f"tritonserver exited with code {code} before it was ready{self._log_hint()}")
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise DebertrtError(f"tritonserver was not ready after {timeout:.0f} s{self._log_hint()}")

    def _log_hint(self) -> str:
        """The reason from the server's log: the first model that failed to load, else the last error."""
        if not self.log_file or not Path(self.log_file).is_file():
            return " (see its log above)"
        lines = Path(self.log_file).read_text(errors="replace").splitlines()
        failures = [line for line in lines if "failed to load '" in line and " version " in line]
        errors = [line for line in lines
                  if (line.startswith("E") or "error" in line.lower()) and not NO_GPU_NOISE.search(line)]
        if not (failures or errors):
            return f" (log: {self.log_file})"
        reason = (failures or errors[-1:])[0].split("] ", 1)[-1].strip('"').split("\\n")[0]
        return f": {reason[:300]} (log: {self.log_file})"

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Triton finishes in-flight requests), SIGKILL after ``timeout``; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._cleanup()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the server and its stub processes at once (its process group), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        """After the server has gone: end the Python-backend stubs a killed server left running
        (they outlive it and ignore SIGTERM), found by this start's shared-memory prefix in their
        arguments, and remove the shared memory it could not."""
        prefix = getattr(self, "_shm_prefix", None)
        if not prefix or self.process is None or self.process.poll() is None:
            return
        for pid in stub_processes(prefix):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for leftover in Path("/dev/shm").glob(f"{prefix}*"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
