"""Comparison: error metrics per output, task agreement, and the tolerances that decide pass/fail.

Pure functions over arrays; they know nothing about runners or files. Padded query rows
are fully masked in DeBERTa, so per-token outputs are compared on non-pad positions only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import InternalError


@dataclass(frozen=True)
class OutputTolerance:
    """What one output of an artifact must meet; a criterion left at None does not apply.

    - atol, rtol: every element satisfies |artifact − ref| ≤ atol + rtol·|ref| (Polygraphy's
      elementwise check, numpy.isclose semantics)
    - min_cosine: every row (a token's hidden vector, an example's logits) has cosine ≥ this
    - max_rel_error: every row has ‖artifact − ref‖ / ‖ref‖ ≤ this
    """

    atol: float | None = None
    rtol: float = 0.0
    min_cosine: float | None = None
    max_rel_error: float | None = None


def output_kind(name: str) -> str:
    """'hidden' for hidden states (judged by direction and relative size), else 'logits'."""
    return "hidden" if name.endswith("hidden_state") or name.endswith("hidden_states") else "logits"


@dataclass(frozen=True)
class Tolerance:
    """What an artifact of one precision must meet: per output (by name, else by kind: 'hidden' or
    'logits'), and, where the task predicts something, agreement with the reference's predictions."""

    outputs: dict
    min_agreement: float | None = None

    def for_output(self, name: str) -> OutputTolerance:
        return self.outputs.get(name) or self.outputs.get(output_kind(name)) or OutputTolerance()

    def to_dict(self) -> dict:
        return {"outputs": {k: asdict(v) for k, v in self.outputs.items()}, "min_agreement": self.min_agreement}


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance({"hidden": OutputTolerance(atol=1e-4), "logits": OutputTolerance(atol=1e-4)}),
    "fp16": Tolerance({"hidden": OutputTolerance(min_cosine=0.999, max_rel_error=0.05),
                       "logits": OutputTolerance(atol=1e-2, rtol=1e-2)}, min_agreement=0.99),
    # int8 moves every value by design: judged by direction, relative size and what it predicts.
    "int8": Tolerance({"hidden": OutputTolerance(min_cosine=0.98, max_rel_error=0.25),
                       "logits": OutputTolerance(min_cosine=0.9)}, min_agreement=0.95),
}


def token_mask(array: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Boolean selector over ``array``: non-pad positions when it is per token (its leading axes are
    the mask's: [batch, sequence] or [batch, choices, sequence]), else all."""
    lead = attention_mask.shape
    if array.ndim >= len(lead) and array.shape[:len(lead)] == lead:
        keep = attention_mask.astype(bool)
        return np.broadcast_to(keep.reshape(keep.shape + (1,) * (array.ndim - len(lead))), array.shape)
    return np.ones(array.shape, dtype=bool)


def _rows(array: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """The vectors compared as wholes, as a 2-D array: a non-pad token's features ([B, S, F...]),
    a sequence's per-position values ([B, S], pad positions zeroed), an example's values ([B, F];
    multiple choice: its [B, choices] logits)."""
    lead = attention_mask.shape
    array = np.asarray(array, dtype=np.float64)
    if array.ndim > len(lead) and array.shape[:len(lead)] == lead:
        return array[attention_mask.astype(bool)].reshape(-1, int(np.prod(array.shape[len(lead):])))
    if array.shape == lead:
        return np.where(attention_mask.astype(bool), array, 0.0).reshape(-1, lead[-1])
    return array.reshape(array.shape[0] if array.ndim else 1, -1)


def row_cosines(expected: np.ndarray, got: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (see ``_rows``); two zero rows count as 1, one zero row as 0."""
    rows_ref, rows_out = _rows(expected, attention_mask), _rows(got, attention_mask)
    norm_ref, norm_out = np.linalg.norm(rows_ref, axis=1), np.linalg.norm(rows_out, axis=1)
    dot = np.einsum("ij,ij->i", rows_ref, rows_out)
    both = (norm_ref > 0) & (norm_out > 0)
    return np.where(both, dot / np.where(both, norm_ref * norm_out, 1.0), (norm_ref == norm_out).astype(float))


def output_errors(expected: np.ndarray, got: np.ndarray, attention_mask: np.ndarray,
                  tolerance: OutputTolerance | None = None) -> dict:
    """Errors of one output on non-pad positions: max/mean abs, max rel, the share of elements
    within ``tolerance``'s atol/rtol, and per row the smallest cosine and largest relative error."""
    if expected.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {expected.shape}, artifact {got.shape}")
    keep = token_mask(expected, attention_mask)
    ref = expected[keep].astype(np.float64)
    out = got[keep].astype(np.float64)
    if not np.all(np.isfinite(out)):
        nan = float("nan")
        return {"max_abs": nan, "mean_abs": nan, "max_rel": nan, "within_tol": 0.0, "min_row_cosine": nan,
                "max_row_rel_error": nan, "count": int(ref.size), "rows": 0, "finite": False, "checked": None}
    diff = np.abs(ref - out)
    within, checked = 1.0, None
    if tolerance is not None and tolerance.atol is not None:
        checked = [tolerance.atol, tolerance.rtol]
        if diff.size:
            within = float((diff <= tolerance.atol + tolerance.rtol * np.abs(ref)).mean())
    cosine = row_cosines(expected, got, attention_mask)
    rows_ref, rows_out = _rows(expected, attention_mask), _rows(got, attention_mask)
    rel = np.linalg.norm(rows_ref - rows_out, axis=1) / np.maximum(np.linalg.norm(rows_ref, axis=1), 1e-12)
    return {
        "max_abs": float(diff.max(initial=0.0)),
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "max_rel": float((diff / np.maximum(np.abs(ref), 1e-6)).max(initial=0.0)),
        "within_tol": within,
        "min_row_cosine": float(cosine.min(initial=1.0)),
        "max_row_rel_error": float(rel.max(initial=0.0)),
        "count": int(ref.size),
        "rows": int(len(cosine)),
        "finite": True,
        "checked": checked,  # the [atol, rtol] within_tol was measured against
    }


def merge_errors(batches: list[dict]) -> dict:
    """``output_errors`` of several batches as one."""
    count = sum(b["count"] for b in batches)
    return {
        "max_abs": max(b["max_abs"] for b in batches),
        "mean_abs": sum(b["mean_abs"] * b["count"] for b in batches) / max(count, 1),
        "max_rel": max(b["max_rel"] for b in batches),
        "within_tol": sum(b["within_tol"] * b["count"] for b in batches) / max(count, 1),
        "min_row_cosine": min(b["min_row_cosine"] for b in batches),
        "max_row_rel_error": max(b["max_row_rel_error"] for b in batches),
        "count": count,
        "rows": sum(b["rows"] for b in batches),
        "finite": all(b["finite"] for b in batches),
        "checked": batches[0]["checked"],
    }


PASSED, FAILED, NOT_JUDGED = "passed", "failed", "not judged"


def judge(errors: dict[str, dict], agreement: float | None, tolerance: Tolerance) -> tuple[str, list[dict]]:
    """The verdict on one artifact and the criteria behind it.

    Each applicable criterion is a row {criterion, output, value, limit, passed}. Non-finite
    outputs fail outright; finiteness alone never passes anything. With no applicable
    criterion the verdict is "not judged"."""
    criteria = []

    def add(name, output, value, limit, ok):
        criteria.append({"criterion": name, "output": output, "value": value, "limit": limit, "passed": bool(ok)})

    for output, e in errors.items():
        if not e["finite"]:
            add("finite", output, "inf/NaN", "finite", False)
            continue
        t = tolerance.for_output(output)
        if t.atol is not None:
            if e["checked"] != [t.atol, t.rtol]:
                raise InternalError(f"{output}: errors were measured against {e['checked']}, not atol {t.atol}, "
                                    f"rtol {t.rtol}")
            add("elements within atol + rtol·abs(ref)", output, e["within_tol"],
                f"100% (atol {t.atol:g}, rtol {t.rtol:g})", e["within_tol"] >= 1.0)
        if t.min_cosine is not None:
            add("row cosine (min)", output, e["min_row_cosine"], f"≥ {t.min_cosine:g}",
                e["min_row_cosine"] >= t.min_cosine)
        if t.max_rel_error is not None:
            add("row ‖Δ‖/‖ref‖ (max)", output, e["max_row_rel_error"], f"≤ {t.max_rel_error:g}",
                e["max_row_rel_error"] <= t.max_rel_error)
    if tolerance.min_agreement is not None and agreement is not None:
        add("prediction agreement", "task", agreement, f"≥ {tolerance.min_agreement:.0%}",
            agreement >= tolerance.min_agreement)
    if not criteria:
        return NOT_JUDGED, criteria
    return (PASSED if all(c["passed"] for c in criteria) else FAILED), criteria


def overall(verdicts: list[str]) -> str:
    """failed if any artifact failed, passed if at least one passed and none failed, else not judged."""
    if FAILED in verdicts:
        return FAILED
    return PASSED if PASSED in verdicts else NOT_JUDGED


def predictions(task: str, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the task predicts from its outputs (class ids, top-k tokens, span ends)."""
    if task == "sequence-classification":
        return {"label": outputs["logits"].argmax(-1)}
    if task == "token-classification":
        return {"label": outputs["logits"].argmax(-1)}
    if task == "masked-lm":
        logits = outputs["logits"]
        top5 = np.argsort(-logits, axis=-1)[..., :5]
        return {"top1": top5[..., 0], "top5": top5}
    if task == "question-answering":
        return {"start": outputs["start_logits"].argmax(-1), "end": outputs["end_logits"].argmax(-1)}
    if task == "multiple-choice":
        return {"choice": outputs["logits"].argmax(-1)}
    return {}


# What a task's agreement is judged by, most telling first: answers merged over the windows of
# long examples, then per-batch predictions.
HEADLINES = ("merged_label", "merged_span", "argmax", "choice", "label", "top1", "exact_span")
# Tasks with a metric on labelled data: one class / right choice per example.
LABELLED_TASKS = {"sequence-classification": "label", "multiple-choice": "choice"}


class TaskAgreement:
    """Accumulates, over batches, how often the artifact predicts what the reference predicts."""

    def __init__(self, task: str):
        self.task = task
        self.counts: dict[str, list[int]] = {}

    def add(self, name: str, agree: np.ndarray) -> None:
        """Count ``agree`` (booleans, one per prediction) under ``name``."""
        hit, total = self.counts.setdefault(name, [0, 0]), agree.size
        hit[0] += int(agree.sum())
        hit[1] += int(total)

    def update(self, expected: dict, got: dict, attention_mask: np.ndarray) -> None:
        ref, out = predictions(self.task, expected), predictions(self.task, got)
        keep = attention_mask.astype(bool)
        if self.task == "sequence-classification":
            self.add("argmax", ref["label"] == out["label"])
        elif self.task == "token-classification":
            self.add("label", (ref["label"] == out["label"])[keep])
        elif self.task == "masked-lm":
            self.add("top1", (ref["top1"] == out["top1"])[keep])
            self.add("top5", (out["top5"] == ref["top1"][..., None]).any(-1)[keep])
        elif self.task == "question-answering":
            self.add("start", ref["start"] == out["start"])
            self.add("end", ref["end"] == out["end"])
            self.add("exact_span", (ref["start"] == out["start"]) & (ref["end"] == out["end"]))
        elif self.task == "multiple-choice":
            self.add("choice", ref["choice"] == out["choice"])

    def result(self) -> dict[str, float]:
        return {name: hit / total if total else float("nan") for name, (hit, total) in self.counts.items()}

    def headline(self) -> float | None:
        """The one agreement number a tolerance is checked against."""
        result = self.result()
        for name in HEADLINES:
            if name in result:
                return result[name]
        return None


def accuracy(task: str, outputs_per_batch: list[dict], labels_per_batch: list[np.ndarray]) -> dict | None:
    """Task metric against known labels: accuracy (sequence classification: the class; multiple
    choice: the right choice)."""
    if task not in LABELLED_TASKS or not labels_per_batch:
        return None
    hits = total = 0
    for outputs, labels in zip(outputs_per_batch, labels_per_batch):
        hits += int((predictions(task, outputs)[LABELLED_TASKS[task]] == labels).sum())
        total += labels.size
    return {"name": "accuracy", "value": hits / total if total else float("nan")}
