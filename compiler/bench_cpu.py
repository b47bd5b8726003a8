"""ONNX Runtime CPU latency (and task accuracy) of fp32 vs our int8 vs ``quantize_dynamic`` int8.

Models: the tiny trained preset (accuracy known on its held-out set) and, optionally, a
DeBERTa-v3-base-sized model with random weights (latency only). Exports and quantized
graphs are cached under ``$DEBERTRT_CACHE/bench`` so reruns only time.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from debertrt.core.artifacts import write_json

SHAPES = ((1, 128), (1, 384), (8, 128), (8, 384))
VARIANTS = ("fp32", "int8 (ours, QDQ)", "int8 (ORT quantize_dynamic)")

BASE_CONFIG = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                   vocab_size=128100, position_buckets=256, max_relative_positions=512, initializer_range=0.02,
                   max_position_embeddings=512, num_labels=3)


def _cache_dir(name: str) -> Path:
    from debertrt.core.artifacts import cache_root

    path = cache_root() / "bench" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _export_cached(ref, out_dir: Path) -> Path:
    """``out_dir/model.onnx`` for ``ref``, reused when the manifest names the same config."""
    from debertrt.core.artifacts import read_json
    from debertrt.compiler.export import ExportOptions, export

    path = out_dir / "model.onnx"
    manifest = out_dir / "manifest.json"
    if path.is_file() and manifest.is_file():
        inputs = read_json(manifest)["stages"].get("export", {}).get("inputs", {})
        if inputs.get("config_hash") == ref.config_hash():
            return path
    return export(ref, out_dir, ExportOptions())


def base_model():
    from debertrt.core.models import ReferenceModel, build_from_config, preset_config

    config = preset_config("tiny-deberta-v3", **BASE_CONFIG)
    return ReferenceModel("deberta-v3-base-random", "sequence-classification", config,
                          build_from_config(config, "sequence-classification"))


def prepare(ref, name: str, fallback: bool, log=print) -> dict[str, Path]:
    """The three graphs of one model (cached by config)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from debertrt.calibration.data import calibration_dataset
    from debertrt.calibration.int8 import Int8Options, quantize_int8

    out = _cache_dir(f"{name}-{ref.config_hash()}")
    fp32 = _export_cached(ref, out)
    ours, dynamic = out / "model.int8.onnx", out / "model.dynamic.onnx"
    if not ours.is_file() or ours.stat().st_mtime < fp32.stat().st_mtime:
        log(f"  quantizing {name} (ours)...")
        if ref.tokenizer is not None and name.startswith("tiny-deberta-v3-trained"):
            from debertrt.core.trained import write_examples  # calibrate on the task's own distribution

            data = calibration_dataset(ref, write_examples(out / "calib.jsonl", 128, seed=99), batch_size=16)
        else:
            big = ref.config.hidden_size >= 512
            data = calibration_dataset(ref, batches=4 if big else 8, batch_size=4 if big else 8)
        quantize_int8(fp32, ours, data, ref=ref,
                      options=Int8Options(max_accuracy_loss=0.01 if fallback else None))
    if not dynamic.is_file() or dynamic.stat().st_mtime < fp32.stat().st_mtime:
        log(f"  quantizing {name} (quantize_dynamic)...")
        quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8)
    return dict(zip(VARIANTS, (fp32, ours, dynamic)))


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def latency_ms(sessions: dict, batch: int, sequence: int, vocab: int, warmup: int, repeat: int,
               rounds: int = 2) -> dict:
    """Median latency per session. Runs come in blocks, one variant at a time (ONNX Runtime's
    worker threads spin after a run, so interleaving single runs would slow the next
    variant), and the blocks alternate over ``rounds`` so that drifting load from other
    processes on a shared machine hits every variant alike."""
    rng = np.random.default_rng(0)
    base = {"input_ids": rng.integers(1, vocab, size=(batch, sequence), dtype=np.int64),
            "attention_mask": np.ones((batch, sequence), np.int64)}
    feeds = {v: {i.name: base[i.name] for i in s.get_inputs()} for v, s in sessions.items()}
    times = {v: [] for v in sessions}
    per_round = max(1, -(-repeat // rounds))
    for _ in range(rounds):
        for v, s in sessions.items():
            for _ in range(warmup):
                s.run(None, feeds[v])
            for _ in range(per_round):
                start = time.perf_counter()
                s.run(None, feeds[v])
                times[v].append((time.perf_counter() - start) * 1e3)
    return {v: statistics.median(t) for v, t in times.items()}


def task_accuracy(session, dataset) -> float:
    hits = total = 0
    for batch, labels in zip(dataset.batches, dataset.labels):
        logits = session.run(None, {i.name: batch[i.name] for i in session.get_inputs()})[0]
        hits += int((logits.argmax(-1) == labels).sum())
        total += labels.size
    return hits / total


def run(base: bool = False, shapes=SHAPES, warmup: int = 2, repeat: int = 10, base_repeat: int = 3,
        threads: int | None = None, log=print) -> dict:
    from debertrt.core.trained import load

    models = [("tiny-deberta-v3-trained", load("sequence-classification"), True)]
    if base:
        log("building the DeBERTa-v3-base-sized random model (cached after the first run)...")
        models.append(("deberta-v3-base-random", base_model(), False))
    result = {"machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
              "date": time.strftime("%Y-%m-%d"), "threads": threads or "onnxruntime default",
              "versions": _versions(), "rows": [], "accuracy": {}}
    for name, ref, fallback in models:
        log(f"{name}:")
        paths = prepare(ref, name, fallback, log)
        reps = repeat if ref.config.hidden_size < 512 else base_repeat
        sessions = {variant: _session(path, threads) for variant, path in paths.items()}
        if ref.eval_dataset is not None:
            result["accuracy"][name] = {v: task_accuracy(s, ref.eval_dataset) for v, s in sessions.items()}
        for batch, sequence in shapes:
            ms = latency_ms(sessions, batch, sequence, int(ref.config.vocab_size), warmup if reps > 3 else 1, reps)
            for variant, path in paths.items():
                result["rows"].append({"model": name, "variant": variant, "batch": batch, "sequence": sequence,
                                       "ms": ms[variant], "size_mb": round(path.stat().st_size / 2**20, 1)})
            log(f"  b{batch:<2} s{sequence:<4} " + "  ".join(f"{v}: {t:.2f} ms" for v, t in ms.items()))
        del sessions
    result["goal"] = goal(result)
    return result


def goal(result: dict) -> dict:
    """Ours at least as fast as quantize_dynamic at every shape, and more accurate on the trained model."""
    rows = {(r["model"], r["variant"], r["batch"], r["sequence"]): r["ms"] for r in result["rows"]}
    slower = []
    for (model, variant, b, s), ms in rows.items():
        if variant == VARIANTS[1]:
            other = rows.get((model, VARIANTS[2], b, s))
            if other is not None and ms > other:
                slower.append({"model": model, "batch": b, "sequence": s, "ours_ms": ms, "dynamic_ms": other})
    acc = result["accuracy"].get("tiny-deberta-v3-trained", {})
    better = acc.get(VARIANTS[1], 0) >= acc.get(VARIANTS[2], 1)
    return {"as_fast_everywhere": not slower, "slower_at": slower, "accuracy_at_least_dynamic": better,
            "met": not slower and better}


def table(result: dict) -> str:
    """Markdown: one row per model/shape, latency per variant, and an accuracy table."""
    lines = ["| model | batch × seq | fp32 ms | int8 ours ms | int8 quantize_dynamic ms | ours vs dynamic |",
             "|---|---|---|---|---|---|"]
    rows = {(r["model"], r["variant"], r["batch"], r["sequence"]): r["ms"] for r in result["rows"]}
    for model, _, b, s in sorted({(m, None, b, s) for m, _, b, s in rows}, key=lambda k: (k[0] != "tiny-deberta-v3-trained", k[2], k[3])):
        fp32, ours, dyn = (rows.get((model, v, b, s)) for v in VARIANTS)
        ratio = f"{dyn / ours:.2f}× faster" if ours and dyn and ours <= dyn else (
            f"{ours / dyn:.2f}× slower" if ours and dyn else "-")
        lines.append(f"| {model} | {b} × {s} | {fp32:.2f} | {ours:.2f} | {dyn:.2f} | {ratio} |")
    if result["accuracy"]:
        lines += ["", "| model | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
        for model, acc in result["accuracy"].items():
            lines.append(f"| {model} (accuracy, held-out set) | " + " | ".join(f"{acc[v]:.4f}" for v in VARIANTS) + " |")
    return "\n".join(lines)


def save(result: dict, path: str | os.PathLike) -> Path:
    return write_json(path, result)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict:
    from debertrt.core.artifacts import versions

    return versions("onnxruntime", "onnx", "torch", "transformers")
