"""The C++ runtime example: it agrees with the plugin spec, and compiles against the TensorRT
headers named by $TensorRT_ROOT (compile-only: no TensorRT library is needed).

    TensorRT_ROOT=/path/with/include pytest tests/test_cpp_runtime.py
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from debertrt.plugins import spec

CPP = Path(__file__).resolve().parents[1] / "runtime" / "cpp"


def test_the_example_asks_for_every_plugin_the_spec_defines():
    source = (CPP / "main.cpp").read_text()
    constants = dict(re.findall(r'constexpr char const\* (kPlugin\w+) = "([^"]*)"', source))
    assert constants == {"kPluginVersion": spec.PLUGIN_VERSION, "kPluginNamespace": spec.PLUGIN_NAMESPACE}
    names = re.search(r"constexpr char const\* kPluginNames\[\] = \{([^}]*)\}", source).group(1)
    assert re.findall(r'"(\w+)"', names) == list(spec.OPS)
    readme = " ".join((CPP / "README.md").read_text().split())
    creators = " and ".join(f"`{name}`" for name in spec.OPS)
    assert (f"the creators of {creators} (namespace `{spec.PLUGIN_NAMESPACE}`, version `{spec.PLUGIN_VERSION}`"
            in readme)


def _tensorrt_include() -> Path:
    root = os.environ.get("TensorRT_ROOT")
    if not root:
        pytest.skip("TensorRT_ROOT is not set: point it at a directory with include/NvInferRuntime.h "
                    "(e.g. include/ of github.com/NVIDIA/TensorRT) to compile the C++ example")
    include = Path(root) / "include"
    if not (include / "NvInferRuntime.h").is_file():
        pytest.skip(f"TensorRT_ROOT={root} has no include/NvInferRuntime.h")
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/include/cuda_runtime_api.h").is_file():
        pytest.skip("no CUDA toolkit (nvcc / cuda_runtime_api.h): the example includes cuda_runtime_api.h")
    return include


def _version(include: Path) -> str:
    text = (include / "NvInferVersion.h").read_text()
    parts = [re.search(rf"#define (?:NV_TENSORRT|TRT)_{p}(?:_ENTERPRISE)? +(\d+)", text) for p in ("MAJOR", "MINOR")]
    return ".".join(m.group(1) for m in parts if m)


def test_the_example_compiles_against_the_tensorrt_headers(tmp_path):
    include = _tensorrt_include()
    print(f"compiling runtime/cpp/main.cpp against TensorRT {_version(include)} headers in {include}")
    build = tmp_path / "build"
    configure = subprocess.run(
        ["cmake", "-S", str(CPP), "-B", str(build), f"-DTensorRT_ROOT={include.parent}",
         "-DDEBERTRT_TRT_COMPILE_ONLY=ON"], capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    assert "DEBERTRT_TRT_COMPILE_ONLY" in configure.stdout
    compiled = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    objects = list(build.rglob("main.cpp.o"))
    assert len(objects) == 1 and objects[0].stat().st_size > 0
