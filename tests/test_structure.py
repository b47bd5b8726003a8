"""The shape of the code base: packages import each other in one direction only, modules stay
small enough to read, and the command line starts without the heavy libraries."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Lowest first: a package may import only packages before it in this order.
LAYERS = ("core", "plugins", "runtime", "calibration", "compiler")
MAX_LINES = 500
LONG_LINES = 400  # above this a module says in its docstring why it is long ("Length: ...")
HEAVY = ("torch", "onnx", "onnxruntime", "tensorrt", "tensorrt_rtx_bindings", "transformers", "triton")


def modules():
    for package in LAYERS:
        yield from sorted((REPO / package).rglob("*.py"))


def imported_packages(path: Path) -> set[str]:
    """The debertrt packages a module imports, at top level or inside functions."""
    package = path.relative_to(REPO).parts[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside its own package
                continue
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "debertrt" and len(parts) > 1 and parts[1] in LAYERS and parts[1] != package:
                found.add(parts[1])
    return found


def test_packages_import_each_other_in_one_direction():
    wrong = []
    for path in modules():
        package = path.relative_to(REPO).parts[0]
        allowed = set(LAYERS[:LAYERS.index(package)])
        for other in imported_packages(path) - allowed:
            wrong.append(f"{path.relative_to(REPO)} imports debertrt.{other}")
    assert not wrong, "imports against the layering " + " < ".join(LAYERS) + ":\n" + "\n".join(wrong)


def test_modules_stay_readable():
    too_long, unexplained = [], []
    for path in modules():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            too_long.append(f"{path.relative_to(REPO)}: {lines} lines")
        elif lines > LONG_LINES and "Length:" not in (ast.get_docstring(ast.parse(path.read_text())) or ""):
            unexplained.append(f"{path.relative_to(REPO)}: {lines} lines")
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
    assert not unexplained, f"modules over {LONG_LINES} lines without a 'Length:' reason in the docstring: {unexplained}"


def test_help_imports_no_heavy_library_and_is_quick():
    code = ("import sys, time; t = time.perf_counter(); from debertrt.compiler.cli import main; "
            "import contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "elapsed = time.perf_counter() - t\n"
            f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})\n"
            "print(elapsed); print(','.join(heavy)); print('usage' in out.getvalue())")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert proc.returncode == 0, proc.stderr
    elapsed, heavy, usage = proc.stdout.splitlines()
    print(f"debertrt --help: {float(elapsed):.3f} s in the interpreter, {time.perf_counter() - start:.2f} s in all")
    assert heavy == "", f"--help imported {heavy}"
    assert usage == "True"
    assert float(elapsed) < 2.0


@pytest.mark.parametrize("command", ["export", "rewrite", "calibrate", "engine", "parity", "build", "export-triton"])
def test_each_subcommand_has_help_without_heavy_imports(command):
    code = ("import sys, contextlib, io\nfrom debertrt.compiler.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        main([{command!r}, '--help'])\n    except SystemExit as e:\n        assert e.code == 0\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"{command} --help imported {proc.stdout.strip()}"
