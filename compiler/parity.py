"""Stage 5: every artifact against the PyTorch fp32 reference -> ``REPORT.json`` + ``REPORT.md`` (+ PNG).

Runners produce outputs (``debertrt.runtime.runners``), ``core.compare`` judges them with the
precision's named tolerances, and the report (``parity_report``) only reads the saved result.
Each artifact's verdict is "passed", "failed" or "not judged" (nothing applied, or it could
not run here); the overall verdict is failed if any artifact failed, passed if at least one
passed and none failed, else not judged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from debertrt.core import log
from debertrt.core.artifacts import write_json, write_text
from debertrt.core.compare import (NOT_JUDGED, PASSED, TOLERANCES, TaskAgreement, Tolerance, accuracy, judge,
                                   merge_errors, output_errors, overall, token_mask)
from debertrt.core.data import Dataset, TokenSpace
from debertrt.core.errors import DebertrtError, NotRunnable
from debertrt.core.models import ReferenceModel
from debertrt.runtime.runners import TorchRunner, open_runner

from .padding import padding_check, with_padding
from .parity_report import plot_errors, render_markdown


def artifact_precision(path: Path) -> str:
    """The precision an artifact was built for: from the ONNX itself, or from engine.json."""
    if path.suffix == ".onnx":
        from debertrt.core.onnx_utils import precision_of

        return precision_of(path)
    if path.suffix == ".plan":
        from debertrt.runtime.engine_json import EngineMetadata

        return EngineMetadata(path).precision
    raise DebertrtError(f"{path}: cannot tell the precision of a {path.suffix!r} artifact; give an .onnx or .plan file")


def reference_outputs(ref: ReferenceModel, dataset: Dataset) -> list[dict]:
    """The PyTorch fp32 outputs of every batch: computed once, judged against by every artifact."""
    with TorchRunner(ref) as runner:
        return [runner.infer(feed) for feed in tqdm(dataset.batches, desc="parity reference", unit="batch",
                                                    leave=False, disable=log.quiet())]


def save_reference(outputs: list[dict], path: str | os.PathLike) -> Path:
    """The reference outputs as one ``.npz`` (``<batch>/<output>`` keys), so a build holds neither
    them nor the PyTorch model through the heavy stages."""
    from debertrt.core.artifacts import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{f"{k}/{name}": value for k, batch in enumerate(outputs) for name, value in batch.items()})
    return path


def load_reference(path: str | os.PathLike) -> list[dict]:
    outputs: dict[int, dict] = {}
    with np.load(path) as data:
        for key in data.files:
            batch, name = key.split("/", 1)
            outputs.setdefault(int(batch), {})[name] = data[key]
    return [outputs[k] for k in sorted(outputs)]


def check_artifact(ref: ReferenceModel, path: Path, dataset: Dataset, reference: list[dict],
                   precision: str | None = None, tolerance: Tolerance | None = None) -> dict:
    """Run one artifact over the dataset and judge it against the reference outputs."""
    path = Path(path)
    if not path.exists():
        raise DebertrtError(f"artifact {str(path)!r} not found")
    precision = precision or artifact_precision(path)
    tolerance = tolerance or TOLERANCES[precision]
    entry = {"path": str(path), "precision": precision, "tolerance": tolerance.to_dict()}
    try:
        runner = open_runner(path, max_sequence=ref.max_sequence)
        entry["runtime"] = runner.runtime
        with runner:
            outputs = [runner.infer(feed) for feed in tqdm(dataset.batches, desc=f"parity {path.name}", unit="batch",
                                                            leave=False, disable=log.quiet())]
            padding = padding_check(runner, TokenSpace.of(ref), tolerance)
    except NotRunnable as reason:
        entry.update(status="not run", reason=str(reason), verdict=NOT_JUDGED, criteria=[])
        return entry

    per_output, errors = {}, {}
    agreement = TaskAgreement(ref.task)
    if dataset.windows is not None:  # long examples split into windows: their answers merged back
        agreement.add(*dataset.windows.agreement(reference, outputs))
    for feed, expected, got in zip(dataset.batches, reference, outputs):
        mask = feed["attention_mask"]
        agreement.update(expected, got, mask)
        for name in ref.output_names:
            keep = token_mask(expected[name], mask)
            errors.setdefault(name, []).append(np.abs(expected[name][keep] - got[name][keep]).ravel())
            per_output.setdefault(name, []).append(
                output_errors(expected[name], got[name], mask, tolerance.for_output(name)))
    entry["outputs"] = {name: merge_errors(batches) for name, batches in per_output.items()}
    task = {"agreement": agreement.result()}
    metric = accuracy(ref.task, outputs, dataset.labels or [])
    if metric is not None:
        task.update(metric=metric["name"], reference=accuracy(ref.task, reference, dataset.labels)["value"],
                    artifact=metric["value"])
    entry["task"] = task
    entry["status"] = "ran"
    entry["padding"] = {k: v for k, v in padding.items() if k != "criteria"}
    entry["verdict"], entry["criteria"] = with_padding(*judge(entry["outputs"], agreement.headline(), tolerance),
                                                       padding)
    entry["_errors"] = {name: np.concatenate(e) for name, e in errors.items()}
    return entry


def parity(ref: ReferenceModel, artifacts: list[str | os.PathLike], dataset: Dataset, report: str | os.PathLike,
           precisions: list[str | None] | None = None, notes: list[str] | None = None,
           reference: list[dict] | None = None) -> dict:
    """Check each artifact; write ``report.json``, ``report.md`` and ``report_errors.png``. ``notes``: what the
    stages before did not do and why (an engine built from another graph, say), listed in the report.
    ``reference``: the PyTorch outputs on ``dataset`` when already computed (default: run them now)."""
    if not dataset.batches:
        raise DebertrtError("parity needs at least one input batch")
    report = Path(report)
    if report.suffix in (".json", ".md"):
        report = report.with_suffix("")
    precisions = precisions or [None] * len(artifacts)
    if reference is None:
        reference = reference_outputs(ref, dataset)
    elif len(reference) != len(dataset.batches):
        raise DebertrtError(f"{len(reference)} reference batches for {len(dataset.batches)} parity batches: "
                            f"rerun the build into an empty directory")
    entries = [check_artifact(ref, Path(a), dataset, reference, p) for a, p in zip(artifacts, precisions)]
    errors = {Path(e["path"]).name: e.pop("_errors") for e in entries if "_errors" in e}
    verdict = overall([e["verdict"] for e in entries])
    result = {
        "model": ref.name,
        "task": ref.task,
        "model_version": ref.version,
        "config_hash": ref.config_hash(),
        "data": dataset.describe(),
        "artifacts": entries,
        "verdict": verdict,
        "passed": verdict == PASSED,
        "counts": {v: sum(e["verdict"] == v for e in entries) for v in ("passed", "failed", NOT_JUDGED)},
        "notes": list(notes or []),
    }
    plot = report.with_name(report.name + "_errors.png")
    if errors:
        plot_errors(errors, plot, ref.task)
        result["plot"] = plot.name
    write_json(report.with_suffix(".json"), result)
    write_text(report.with_suffix(".md"), render_markdown(result))
    return result
