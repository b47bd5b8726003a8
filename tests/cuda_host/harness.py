"""Build CUDA sources for the CPU with cuda_host (execution model: cuda_host.h) and run them
under AddressSanitizer + UndefinedBehaviorSanitizer or ThreadSanitizer.

``translate`` rewrites a ``.cu``'s launch lines (nothing else) into calls; ``build`` compiles and
links programs in parallel, sharing the runtime and driver objects; ``run_all`` runs programs
side by side with their sanitizer's options and collects exit code, output and time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HARNESS = Path(__file__).resolve().parent

# -g1: file:line and inlined frames in reports at half the compile time of -g.
COMMON_FLAGS = ["-g1", "-O1", "-fno-omit-frame-pointer", "-ffp-contract=off", "-pthread", "-Wall", "-Wextra",
                "-Wno-unknown-pragmas"]  # `#pragma unroll` is nvcc's


@dataclass(frozen=True)
class Sanitizer:
    flags: tuple[str, ...]
    env: dict
    markers: tuple[str, ...]  # any of these in stderr is a report


SANITIZERS = {
    "asan": Sanitizer(("-fsanitize=address,undefined", "-fno-sanitize-recover=all"),
                      {"ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"},
                      ("ERROR: AddressSanitizer", "runtime error:")),
    "tsan": Sanitizer(("-fsanitize=thread",), {"TSAN_OPTIONS": "halt_on_error=1"}, ("WARNING: ThreadSanitizer",)),
}

# One launch per line: `kernel<<<grid, block[, shared, stream]>>>(` -> `::cuda_host::launch(kernel, ...)(`.
LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;\n]*>)?)\s*<<<([^;\n]*?)>>>\s*\(")


def translate(source: Path, target: Path) -> int:
    """Write ``source`` with its launches rewritten to ``target``; returns the number of launches.

    ``#line`` keeps the source's name and line numbers in diagnostics and sanitizer reports.
    """
    translated, launches = LAUNCH.subn(r"::cuda_host::launch(\1, \2)(", source.read_text())
    if "<<<" in translated:
        raise ValueError(f"{source}: a launch the harness cannot rewrite (keep `k<<<...>>>(` on one line)")
    quoted = str(source).replace("\\", "\\\\").replace('"', '\\"')
    target.write_text(f'#line 1 "{quoted}"\n{translated}')
    return launches


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "?").strip()


@dataclass
class Toolchain:
    cxx: str
    cuda_include: Path
    unavailable: dict  # sanitizer -> why it cannot be used here

    @property
    def sanitizers(self) -> list[str]:
        return [s for s in SANITIZERS if s not in self.unavailable]


def probe_sanitizer(cxx: str, sanitizer: Sanitizer, directory: Path) -> str | None:
    """None if a threaded program builds and runs with the sanitizer, else the reason."""
    source = directory / "probe.cpp"
    source.write_text("#include <thread>\nint main() { std::thread([] {}).join(); }\n")
    exe = directory / f"probe-{sanitizer.flags[0].split('=')[1]}"
    proc = subprocess.run([cxx, *sanitizer.flags, "-pthread", str(source), "-o", str(exe)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return f"{cxx} cannot build with {' '.join(sanitizer.flags)}: {_first_line(proc.stderr)}"
    proc = subprocess.run([str(exe)], capture_output=True, text=True, env=dict(os.environ, **sanitizer.env))
    if proc.returncode != 0:
        return f"the {sanitizer.flags[0]} runtime does not start here: {_first_line(proc.stderr)}"
    return None


def find_toolchain(cuda_include: Path | None, directory: Path) -> Toolchain | str:
    """The compiler ($CXX, g++ or clang++) and which sanitizers work, or why nothing can run."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        return "no C++ compiler (g++, clang++ or $CXX) to build CUDA sources for the host"
    if cuda_include is None or not all((cuda_include / h).is_file() for h in ("cuda_fp16.h", "cuda_bf16.h")):
        return ("CUDA headers not found (cuda_runtime_api.h, cuda_fp16.h, cuda_bf16.h beside nvcc, $CUDA_HOME or "
                "/usr/local/cuda): cuda_host uses their host conversions")
    directory.mkdir(parents=True, exist_ok=True)
    unavailable = {name: reason for name, s in SANITIZERS.items()
                   if (reason := probe_sanitizer(cxx, s, directory)) is not None}
    if len(unavailable) == len(SANITIZERS):
        return "; ".join(unavailable.values())
    return Toolchain(cxx, cuda_include, unavailable)


@dataclass(frozen=True)
class Program:
    name: str
    sanitizer: str
    source: Path  # a .cu
    driver: Path | None = None  # a C++ main to link in (None: the .cu has its own)
    includes: tuple[Path, ...] = ()  # for the .cu (after its own folder) and the driver


def build(toolchain: Toolchain, programs: list[Program], directory: Path) -> dict[str, Path]:
    """Compile (in parallel, objects shared where they can be) and link every program."""
    directory.mkdir(parents=True, exist_ok=True)
    include = ["-isystem", str(toolchain.cuda_include), "-I", str(HARNESS)]
    compiles: dict[Path, list[str]] = {}
    links: dict[str, list[str]] = {}
    for program in programs:
        flags = [*COMMON_FLAGS, *SANITIZERS[program.sanitizer].flags]
        runtime = directory / f"cuda_host-{program.sanitizer}.o"
        compiles[runtime] = [*flags, "-std=c++20", *include, "-c", str(HARNESS / "cuda_host.cpp")]
        translated = directory / f"{program.name}.cpp"
        if translate(program.source, translated) < 1:
            raise ValueError(f"no kernel launch in {program.source}")
        objects = [directory / f"{program.name}.o", runtime]
        own = [f"-I{p}" for p in (program.source.parent, *program.includes)]
        compiles[objects[0]] = [*flags, "-std=c++17", *include, *own, "-include", "cuda_host.h", "-c",
                                str(translated)]
        if program.driver is not None:
            objects.append(directory / f"{program.driver.stem}-{program.sanitizer}.o")
            compiles[objects[-1]] = [*flags, "-std=c++17", *include, *(f"-I{p}" for p in program.includes), "-c",
                                     str(program.driver)]
        links[program.name] = [*flags, *map(str, objects)]

    def run(args: list[str], output: Path) -> None:
        proc = subprocess.run([toolchain.cxx, *args, "-o", str(output)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{toolchain.cxx} {' '.join(args)}\n{proc.stderr[-4000:]}")

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        list(pool.map(run, compiles.values(), compiles.keys()))
        executables = {name: directory / name for name in links}
        list(pool.map(run, links.values(), executables.values()))
    return executables


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def reports(self, sanitizer: str) -> list[str]:
        return [m for m in SANITIZERS[sanitizer].markers if m in self.stderr]

    def describe(self) -> str:
        return f"exit {self.returncode}\n{self.stdout[-2000:]}\n{self.stderr[-6000:]}"


def run_all(jobs: list[tuple[Path, list[str], str]], directory: Path, timeout: float = 600) -> list[Run]:
    """Run (executable, args, sanitizer) jobs at the same time; output goes to files (no pipe to
    fill). A job still running after ``timeout`` seconds is killed (a hang is a failure)."""
    directory.mkdir(parents=True, exist_ok=True)
    started = []
    t0 = time.perf_counter()
    for index, (exe, args, sanitizer) in enumerate(jobs):
        out, err = directory / f"{exe.name}-{index}.out", directory / f"{exe.name}-{index}.err"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            started.append((subprocess.Popen([str(exe), *args], stdout=stdout, stderr=stderr,
                                             env=dict(os.environ, **SANITIZERS[sanitizer].env)), out, err))
    finished: dict[int, float] = {}
    while len(finished) < len(started):
        for index, (proc, _, _) in enumerate(started):
            if index not in finished and (proc.poll() is not None or time.perf_counter() - t0 > timeout):
                if proc.returncode is None:
                    proc.kill()
                    proc.wait()
                finished[index] = time.perf_counter() - t0
        time.sleep(0.02)
    return [Run(proc.returncode, out.read_text(), err.read_text(), finished[index])
            for index, (proc, out, err) in enumerate(started)]
