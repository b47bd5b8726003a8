"""Stage 5: every artifact against the PyTorch fp32 reference -> ``REPORT.json`` + ``REPORT.md`` (+ PNG).

Runners produce outputs, ``compare`` judges them, and the Markdown report only reads the
saved results.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .artifacts import write_json, write_text, atomic_path
from .compare import TOLERANCES, TaskAgreement, Tolerance, accuracy, output_errors, token_mask
from .errors import DebertrtError
from .inputs import Dataset
from .models import ReferenceModel
from .runners import OnnxRuntimeRunner, TorchRunner

class NotRunnable(Exception):
    """An artifact this machine cannot run (say, a TensorRT engine without TensorRT); the
    report records the reason instead of results."""


def onnx_precision(path: str | os.PathLike) -> str:
    """int8 when the graph has Q/DQ nodes, fp16 when it holds fp16 weights, else fp32."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def open_runner(path: Path, ref: ReferenceModel):
    """The runner for an artifact, chosen by its kind."""
    if path.suffix == ".onnx":
        return OnnxRuntimeRunner(path, max_sequence=ref.max_sequence)
    if path.suffix == ".plan":
        from debertrt.runtime.engine import TensorRTRunner

        # reads engine.json; entering it raises NotRunnable without TensorRT or a suitable GPU
        return TensorRTRunner(path, max_sequence=ref.max_sequence)
    raise DebertrtError(f"{path}: unknown artifact kind {path.suffix!r}; give an .onnx or .plan file")


def artifact_precision(path: Path) -> str:
    if path.suffix == ".onnx":
        return onnx_precision(path)
    if path.suffix == ".plan":
        from debertrt.runtime.engine import EngineMetadata

        return EngineMetadata(path).precision
    raise DebertrtError(f"{path}: cannot tell the precision of a {path.suffix!r} artifact")


def check_artifact(ref: ReferenceModel, path: Path, dataset: Dataset, reference_outputs: list[dict],
                   precision: str | None = None, tolerance: Tolerance | None = None) -> dict:
    """Run one artifact over the dataset and judge it against the reference outputs."""
    path = Path(path)
    if not path.exists():
        raise DebertrtError(f"artifact {str(path)!r} not found")
    precision = precision or artifact_precision(path)
    tolerance = tolerance or TOLERANCES[precision]
    entry = {"path": str(path), "precision": precision, "tolerance": tolerance.to_dict()}
    try:
        runner = open_runner(path, ref)
        entry["runtime"] = runner.runtime
        outputs = []
        with runner:
            for feed in tqdm(dataset.batches, desc=f"parity {path.name}", unit="batch", leave=False):
                outputs.append(runner.infer(feed))
    except NotRunnable as reason:
        entry.update(status="not run", reason=str(reason), passed=None)
        return entry

    per_output, errors = {}, {}
    agreement = TaskAgreement(ref.task)
    for feed, expected, got in zip(dataset.batches, reference_outputs, outputs):
        mask = feed["attention_mask"]
        agreement.update(expected, got, mask)
        for name in ref.output_names:
            keep = token_mask(expected[name], mask)
            errors.setdefault(name, []).append(np.abs(expected[name][keep] - got[name][keep]).ravel())
            per_output.setdefault(name, []).append(output_errors(expected[name], got[name], mask, tolerance.atol))
    entry["outputs"] = {name: _merge(batches) for name, batches in per_output.items()}
    task = {"agreement": agreement.result()}
    metric = accuracy(ref.task, outputs, dataset.labels or [])
    if metric is not None:
        reference = accuracy(ref.task, reference_outputs, dataset.labels)
        task.update(metric=metric["name"], reference=reference["value"], artifact=metric["value"])
    entry["task"] = task
    entry["status"] = "ran"
    entry["passed"] = _passed(entry, tolerance, agreement.headline())
    entry["_errors"] = {name: np.concatenate(e) for name, e in errors.items()}
    return entry


def _merge(batches: list[dict]) -> dict:
    count = sum(b["count"] for b in batches)
    return {
        "max_abs": max(b["max_abs"] for b in batches),
        "mean_abs": sum(b["mean_abs"] * b["count"] for b in batches) / max(count, 1),
        "max_rel": max(b["max_rel"] for b in batches),
        "cosine": min(b["cosine"] for b in batches),
        "within_tol": sum(b["within_tol"] * b["count"] for b in batches) / max(count, 1),
        "count": count,
    }


def _passed(entry: dict, tolerance: Tolerance, agreement: float | None) -> bool:
    for metrics in entry["outputs"].values():
        if not np.isfinite(metrics["max_abs"]):
            return False
        if tolerance.atol is not None and metrics["max_abs"] > tolerance.atol:
            return False
    if tolerance.min_agreement is not None and agreement is not None and agreement < tolerance.min_agreement:
        return False
    return True


def parity(ref: ReferenceModel, artifacts: list[str | os.PathLike], dataset: Dataset, report: str | os.PathLike,
           precisions: list[str | None] | None = None) -> dict:
    """Check each artifact; write ``report.json``, ``report.md`` and ``report_errors.png``."""
    if not dataset.batches:
        raise DebertrtError("parity needs at least one input batch")
    report = Path(report)
    if report.suffix in (".json", ".md"):
        report = report.with_suffix("")
    precisions = precisions or [None] * len(artifacts)
    with TorchRunner(ref) as torch_runner:
        reference_outputs = [torch_runner.infer(feed) for feed in
                             tqdm(dataset.batches, desc="parity reference", unit="batch", leave=False)]
    entries = [check_artifact(ref, Path(a), dataset, reference_outputs, p) for a, p in zip(artifacts, precisions)]
    errors = {Path(e["path"]).name: e.pop("_errors") for e in entries if "_errors" in e}
    ran = [e for e in entries if e["status"] == "ran"]
    result = {
        "model": ref.name,
        "task": ref.task,
        "model_version": ref.version,
        "config_hash": ref.config_hash(),
        "data": {"source": dataset.source, "examples": len(dataset), "batches": len(dataset.batches),
                 "labels": dataset.labels is not None, **dataset.extra},
        "artifacts": entries,
        "passed": bool(ran) and all(e["passed"] for e in ran),
    }
    plot = report.with_name(report.name + "_errors.png")
    if errors:
        _plot_errors(errors, plot, ref.task)
        result["plot"] = plot.name
    write_json(report.with_suffix(".json"), result)
    write_text(report.with_suffix(".md"), render_markdown(result))
    return result


def _plot_errors(errors: dict[str, dict[str, np.ndarray]], path: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({out for per in errors.values() for out in per})
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, out in zip(axes[0], names):
        for artifact, per in errors.items():
            if out in per and per[out].size:
                values = np.maximum(per[out], 1e-12)
                bins = np.logspace(-12, max(1.0, np.log10(values.max()) + 0.5), 60)
                ax.hist(values, bins=bins, histtype="step", label=artifact, linewidth=1.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"|artifact - PyTorch fp32| of {out} (non-pad positions)")
        ax.set_ylabel("elements")
        ax.legend(fontsize=8)
    fig.suptitle(f"Absolute error vs the PyTorch fp32 reference ({task})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def render_markdown(result: dict) -> str:
    lines = [
        f"# Parity report: {result['model']} ({result['task']})",
        "",
        f"Reference: PyTorch fp32. Data: {result['data']['source']} — {result['data']['examples']} examples "
        f"in {result['data']['batches']} batches; per-token outputs compared on non-pad positions only.",
        "",
        f"**Overall: {'PASSED' if result['passed'] else 'FAILED'}**",
        "",
        "| artifact | precision | runtime | output | max abs | mean abs | max rel | cosine | within tol | tolerance | passed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in result["artifacts"]:
        name = Path(e["path"]).name
        tol = e["tolerance"]
        tol_text = f"atol {_fmt(tol['atol'])}" + (f", agree ≥ {tol['min_agreement']}" if tol["min_agreement"] else "")
        if e["status"] != "ran":
            lines.append(f"| {name} | {e['precision']} | {e.get('runtime', '-')} | — | not run: {e['reason']} "
                         f"| | | | | {tol_text} | — |")
            continue
        for out, m in e["outputs"].items():
            lines.append(f"| {name} | {e['precision']} | {e['runtime']} | {out} | {_fmt(m['max_abs'])} | "
                         f"{_fmt(m['mean_abs'])} | {_fmt(m['max_rel'])} | {_fmt(m['cosine'])} | "
                         f"{m['within_tol']:.2%} | {tol_text} | {'yes' if e['passed'] else '**no**'} |")
    lines += ["", "## Task agreement with the reference", "",
              "| artifact | agreement | metric | reference | artifact |", "|---|---|---|---|---|"]
    for e in result["artifacts"]:
        if e["status"] != "ran":
            continue
        task = e["task"]
        agree = ", ".join(f"{k} {v:.2%}" for k, v in task["agreement"].items()) or "-"
        lines.append(f"| {Path(e['path']).name} | {agree} | {task.get('metric', '-')} | "
                     f"{_fmt(task.get('reference'))} | {_fmt(task.get('artifact'))} |")
    if result.get("plot"):
        lines += ["", f"![error histogram]({result['plot']})"]
    return "\n".join(lines) + "\n"
