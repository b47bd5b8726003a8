"""The Python environment of the Python-backend models and the checks `debertrt serve` makes
before it starts a server (no server is started here)."""

import os
import subprocess
from pathlib import Path

import pytest

from debertrt.core.errors import DebertrtError
from debertrt.runtime.serving import pyenv, server as server_module, text
from debertrt.runtime.serving.server import TritonServer, prepare_environments


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(pyenv.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_environment_has_this_pythons_packages(cache):
    env = pyenv.ensure_env()
    assert env == pyenv.default_env_path() and env.is_relative_to(cache)
    assert (env / "bin" / "activate").is_file() and (env / pyenv.COMPLETE).is_file()
    # what the stub does: activate, then an interpreter found as python3 on PATH
    probe = ("import sys, numpy, tokenizers, onnxruntime, debertrt.runtime.serving.text as t; "
             "print(sys.prefix); print(t.__file__)")
    out = subprocess.run(["bash", "-c", f"source {env}/bin/activate && python3 -c '{probe}'"], capture_output=True,
                         text=True, check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    prefix, module = out.stdout.split()
    assert Path(prefix) == env
    assert Path(module).resolve() == Path(text.__file__).resolve()  # this checkout's debertrt
    library = pyenv.libpython()
    if library is not None:  # the stub loads the same libpython as this interpreter
        assert (env / "lib" / library.name).resolve() == library.resolve()
    marker = (env / pyenv.COMPLETE).stat().st_mtime_ns
    assert pyenv.ensure_env() == env and (env / pyenv.COMPLETE).stat().st_mtime_ns == marker  # made once


def _repo(tmp_path, env_value):
    model = tmp_path / "repo" / "m"
    model.mkdir(parents=True)
    (model / "config.pbtxt").write_text(f'name: "m"\nbackend: "python"\nparameters [\n  {{\n    key: "EXECUTION_ENV_PATH"\n'
                                        f'    value {{\n      string_value: "{env_value}"\n    }}\n  }}\n]\n')
    return tmp_path / "repo"


def test_serve_checks_the_environments(tmp_path, cache):
    with pytest.raises(DebertrtError, match="m: EXECUTION_ENV_PATH /nonexistent/env does not exist: export again "
                                            "with --python-env auto"):
        prepare_environments(_repo(tmp_path / "a", "/nonexistent/env"))
    # this Python's own environment, deleted since the export (a cleaned cache): made again
    default = pyenv.default_env_path()
    assert not default.exists()
    assert prepare_environments(_repo(tmp_path / "b", default)) == [default]
    assert (default / pyenv.COMPLETE).is_file()
    relative = _repo(tmp_path / "c", "$$TRITON_MODEL_DIRECTORY/env")
    (relative / "m" / "env").mkdir()
    assert prepare_environments(relative) == [relative / "m" / "env"]
    with pytest.raises(DebertrtError, match="is not a model repository"):
        TritonServer(tmp_path / "a")


def test_a_python_without_a_stub_is_refused(tmp_path, cache, monkeypatch):
    root = tmp_path / "pytriton" / "tritonserver"
    for version in ("3.10", "3.11"):
        (root / "python_backend_stubs" / version).mkdir(parents=True)
        (root / "python_backend_stubs" / version / server_module.STUB_NAME).write_bytes(b"stub " + version.encode())
    (root / "backends" / "python").mkdir(parents=True)
    for name in server_module.PYTHON_BACKEND_FILES:
        (root / "backends" / "python" / name).write_bytes(name.encode())
    monkeypatch.setattr(pyenv, "python_version", lambda: "3.11")
    backends = server_module._wheel_backends(root)
    assert (backends / "python" / server_module.STUB_NAME).read_bytes() == b"stub 3.11"
    assert sorted(p.name for p in (backends / "python").iterdir()) == sorted(
        [server_module.STUB_NAME, *server_module.PYTHON_BACKEND_FILES])
    monkeypatch.setattr(pyenv, "python_version", lambda: "3.14")
    with pytest.raises(DebertrtError, match="stubs for Python 3.10, 3.11, not 3.14"):
        server_module._wheel_backends(root)
    with pytest.raises(DebertrtError, match="tritonserver '/nowhere/tritonserver' not found"):
        server_module.find_distribution("/nowhere/tritonserver")
