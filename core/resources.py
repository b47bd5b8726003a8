"""What a stage cost: wall time, CPU time and peak resident memory, and whether the next one fits.

Peak RSS per stage comes from the kernel's high-water mark (``VmHWM`` in ``/proc/self/status``),
reset at each stage's start by writing ``5`` to ``/proc/self/clear_refs``; stages nest (build
runs export, rewrite, ...), so a stage that starts inside another first folds the mark into the
outer one's peak. Where the reset is not allowed the lifetime peak (``ru_maxrss``) is reported,
marked as such. Child processes count through ``RUSAGE_CHILDREN`` (CPU time, largest child's peak).
The reset also resets what ``getrusage(RUSAGE_SELF).ru_maxrss`` (and a parent's ``wait4``) reports
for the process: the peak of a whole run is the largest of its stages' peaks.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Iterator

from .errors import DebertrtError

MIB = 1024 ** 2
GIB = 1024 ** 3


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_bytes() -> int:
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo``: what the kernel can give without swapping; None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class StageMeter:
    """Started by ``measure``; ``reading()`` is what the manifest records."""

    start_wall: float = field(default_factory=time.perf_counter)
    start_cpu: float = 0.0
    start_rss: int = 0
    peak: int = 0
    resettable: bool = True

    def current_peak(self) -> int:
        return max(self.peak, _peak_bytes())

    def reading(self) -> dict:
        times = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = sum(t.ru_utime + t.ru_stime for t in times)
        child_peak = times[1].ru_maxrss * 1024
        return {"pid": os.getpid(),  # a stage may run in a child process of the build (``core.child``)
                "wall_s": round(time.perf_counter() - self.start_wall, 3),
                "cpu_s": round(cpu - self.start_cpu, 3),
                "rss_start_mib": round(self.start_rss / MIB, 1),
                "peak_rss_mib": round(self.current_peak() / MIB, 1),
                "peak_scope": "stage" if self.resettable else "process",
                "child_peak_rss_mib": round(child_peak / MIB, 1)}


_active: list[StageMeter] = []


@contextlib.contextmanager
def measure() -> Iterator[StageMeter]:
    """Measure the enclosed stage; ``current()`` returns its meter while it runs."""
    for outer in _active:
        outer.peak = outer.current_peak()
    rss = rss_bytes()
    resettable = _reset_peak()
    times = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    meter = StageMeter(start_cpu=sum(t.ru_utime + t.ru_stime for t in times), start_rss=rss,
                       peak=rss, resettable=resettable)
    _active.append(meter)
    try:
        yield meter
    finally:
        _active.pop()
        for outer in _active:
            outer.peak = max(outer.peak, meter.current_peak())


def measured(stage):
    """Decorator: the stage function runs inside ``measure``, so its ``record_stage`` entry carries its
    cost; what it freed is handed back to the system before the next stage."""
    @functools.wraps(stage)
    def run(*args, **kwargs):
        try:
            with measure():
                return stage(*args, **kwargs)
        finally:
            release_memory()
    return run


def release_memory() -> None:
    """Collect garbage and return the C heap's free pages to the system: glibc keeps freed protobuf and
    NumPy buffers for reuse, so a finished stage would otherwise leave its peak as the next one's floor."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def current() -> dict | None:
    """The running stage's reading so far (None outside ``measure``)."""
    return _active[-1].reading() if _active else None


def require_memory(need: int, what: str, fix: str) -> None:
    """Refuse, before the work starts, a step estimated to need more than the memory available now:
    a one-line ``DebertrtError`` naming ``fix`` instead of the kernel's out-of-memory kill halfway."""
    free = available_bytes()
    if free is not None and need > free:
        raise DebertrtError(f"{what} needs about {need / GIB:.1f} GiB, {free / GIB:.1f} GiB is available: {fix}")


class BatchForecast:
    """Memory a batch will take, forecast from the first one: its measured peak growth scaled by
    batch × sequence² (attention's scores grow with the square of the length), checked against the
    memory available before each later batch runs."""

    def __init__(self, what: str, fix: str = "use a smaller --batch-size or --max-length"):
        self.what, self.fix = what, fix
        self.per_unit: float | None = None

    @staticmethod
    def units(feed: dict) -> int:
        shape = next(iter(feed.values())).shape
        batch, sequence = int(shape[0]) if shape else 1, int(shape[-1]) if shape else 1
        return max(1, batch * sequence * sequence)

    @contextlib.contextmanager
    def batch(self, feed: dict, index: int):
        units = self.units(feed)
        if self.per_unit is not None:
            require_memory(int(self.per_unit * units), f"{self.what} (batch {index}, shape "
                           f"{'x'.join(str(d) for d in next(iter(feed.values())).shape)})", self.fix)
        with measure() as meter:
            yield
        if self.per_unit is None:
            self.per_unit = max(0, meter.current_peak() - meter.start_rss) / units
