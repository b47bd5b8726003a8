#!/usr/bin/env python
"""Time and peak memory of the whole default chain (``debertrt build``) on full-size DeBERTa shapes.

    python scripts/bench_build.py [--models base,large] [--task sequence-classification]
        [--json docs/bench_build.json] [-- extra build flags]

Each shape (random weights, the published config's sizes) is saved once with ``save_pretrained``
under the cache (``$DEBERTRT_CACHE/bench-build/<name>``); each build runs in its own child
process. The per-stage wall, CPU and peak RSS come from the build's ``manifest.json`` (a full-size
model's stages run in their own processes); the build's peak memory is the largest of every
process's peak RSS and of the sampled sum of Pss over its process tree (the sum of RSS, an upper
bound, is reported beside it). Prints a Markdown table and writes
JSON. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

# The published configurations' sizes (random weights: the speed and memory do not depend on them).
V3 = dict(model_type="deberta-v2", vocab_size=128100, max_position_embeddings=512, relative_attention=True,
          position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
          position_biased_input=False, max_relative_positions=-1, type_vocab_size=0, layer_norm_eps=1e-7,
          hidden_act="gelu")
SHAPES = {
    "base": dict(V3, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(V3, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "xlarge-v2": dict(V3, hidden_size=1536, num_hidden_layers=24, num_attention_heads=24, intermediate_size=6144,
                      conv_kernel_size=3, conv_act="gelu"),
}
GOALS = {"base": (4 * 60, 4.0), "large": (12 * 60, 8.0), "xlarge-v2": (30 * 60, 16.0)}  # seconds, GiB


def checkpoint(name: str, task: str) -> Path:
    """The saved random-weight checkpoint of shape ``name`` (made in a child process, once)."""
    from debertrt.core.artifacts import cache_root

    path = cache_root() / "bench-build" / f"{name}-{task}"
    if not (path / "config.json").is_file():
        subprocess.run([sys.executable, __file__, "--save", name, "--task", task, "--to", str(path)], check=True)
    return path


def save(name: str, task: str, path: Path) -> None:
    import torch
    from transformers import AutoConfig

    from debertrt.core.models import _auto_class

    config = AutoConfig.for_model(**SHAPES[name])
    torch.manual_seed(0)
    model = _auto_class(task).from_config(config).eval()
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    os.replace(tmp, path)


def run_build(name: str, task: str, out: Path, extra: list[str]) -> dict:
    ckpt = checkpoint(name, task)
    cmd = [sys.executable, "-m", "debertrt.compiler.cli", "build", "--model", str(ckpt), "--task", task,
           "--out", str(out), *extra]
    out.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        sampler = TreeMemory(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        sampler.stop()
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    stages = {}
    manifest = out / "manifest.json"
    if manifest.is_file():
        stages = {k: v["resources"] for k, v in json.loads(manifest.read_text())["stages"].items()
                  if "resources" in v}
    tail = log.read_text().splitlines()[-3:]
    goal_s, goal_gib = GOALS[name]
    # the stages reset the kernel's high-water mark, which ru_maxrss reads too: a process's peak is the
    # largest of its stages' peaks; stages in child processes (not waited for by the build itself) add
    # their CPU time, and the memory of the whole process tree is sampled (a sum of Pss at one moment;
    # the sum of RSS, which counts the fork server's shared pages once per process, is reported beside it)
    peaks = [usage.ru_maxrss * 1024, sampler.peak_pss] + [c[k] * 1024**2 for c in stages.values()
                                                       for k in ("peak_rss_mib", "child_peak_rss_mib")]
    peak_gib = max(peaks) / 1024**3
    cpu = usage.ru_utime + usage.ru_stime + sum(c["cpu_s"] for c in stages.values() if c.get("pid") != proc.pid)
    return {"model": name, "task": task, "exit_code": code, "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "system_s_build_process": round(usage.ru_stime, 1),
            "peak_rss_gib": round(peak_gib, 2), "tree_peak_rss_gib": round(sampler.peak / 1024**3, 2),
            "tree_peak_pss_gib": round(sampler.peak_pss / 1024**3, 2), "goal": {"wall_s": goal_s, "peak_rss_gib": goal_gib,
                                                         "met": code == 0 and wall <= goal_s and peak_gib <= goal_gib},
            "stages": stages, "command": " ".join(cmd), "log_tail": tail}


class TreeMemory:
    """The largest memory of a process and its descendants together (the build's stages run in child
    processes beside the parent and a fork server), sampled every 0.2 s from /proc, two ways: the sum
    of their RSS (a page shared by several processes counts in each: an upper bound) and the sum of
    their proportional set sizes (``Pss``: a page shared by n processes counts 1/n in each)."""

    def __init__(self, root: int, every: float = 0.2):
        self.root, self.every, self.peak, self.peak_pss = root, every, 0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.every):
            rss, pss = self.totals()
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)

    def tree(self) -> set[int]:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        tree, grew = {self.root}, True
        while grew:
            more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
            tree |= more
            grew = bool(more)
        return tree

    def totals(self) -> tuple[int, int]:
        rss = pss = 0
        for pid in self.tree():
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.endswith("kB\n")}
            except (OSError, ValueError, IndexError):
                continue
            rss, pss = rss + fields.get("Rss", 0), pss + fields.get("Pss", 0)
        return rss, pss

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def machine() -> dict:
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
            "cpus": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "").strip()
        flags = fields.get("Flags", "").split()
        info["cpu_flags"] = [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))]
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return info


def table(results: list[dict]) -> str:
    lines = ["| model | stage | wall | CPU | peak RSS |", "|---|---|---|---|---|"]
    for r in results:
        for stage, c in r["stages"].items():
            lines.append(f"| {r['model']} | {stage} | {c['wall_s']:.1f} s | {c['cpu_s']:.1f} s | "
                         f"{c['peak_rss_mib'] / 1024:.2f} GiB |")
        verdict = "failed (exit %d)" % r["exit_code"] if r["exit_code"] else \
            ("goal met" if r["goal"]["met"] else "goal missed")
        lines.append(f"| **{r['model']}** | **whole build** ({verdict}) | **{r['wall_s']:.0f} s** | "
                     f"{r['cpu_s']:.0f} s | **{r['peak_rss_gib']:.2f} GiB** (all processes together, sampled: "
                     f"RSS {r['tree_peak_rss_gib']:.2f} GiB, Pss {r['tree_peak_pss_gib']:.2f} GiB) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="base,large", help=f"comma-separated, of: {', '.join(SHAPES)}")
    parser.add_argument("--task", default="sequence-classification")
    parser.add_argument("--out", default=None, help="build directories (default: the cache's bench-build/out)")
    parser.add_argument("--json", default="docs/bench_build.json", help="where to write the results")
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--to", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.save:
        save(args.save, args.task, Path(args.to))
        return 0
    from debertrt.core.artifacts import cache_root

    out_root = Path(args.out) if args.out else cache_root() / "bench-build" / "out"
    results = []
    for name in args.models.split(","):
        if name not in SHAPES:
            parser.error(f"unknown model {name!r}: choose from {', '.join(SHAPES)}")
        results.append(run_build(name, args.task, out_root / name, extra))
        print(table(results[-1:]), flush=True)
        report = {"machine": machine(), "command": "python scripts/bench_build.py " + " ".join(sys.argv[1:]),
                  "results": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(results))
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
