"""Comparison: error metrics per output, task agreement, and the tolerances that decide pass/fail.

Pure functions over arrays; they know nothing about runners or files. Padded query rows
are fully masked in DeBERTa, so per-token outputs are compared on non-pad positions only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """What an artifact of one precision must meet: max abs error on every output, and
    (where the task has one) agreement of its predictions with the reference."""

    atol: float | None
    min_agreement: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4),
    "fp16": Tolerance(atol=1e-2, min_agreement=0.99),
    # int8 moves logits by design; it is judged by what it predicts.
    "int8": Tolerance(atol=None, min_agreement=0.95),
}


def token_mask(array: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Boolean selector over ``array``: non-pad positions when it is per token, else all."""
    batch, sequence = attention_mask.shape
    if array.ndim >= 2 and array.shape[:2] == (batch, sequence):
        keep = attention_mask.astype(bool)
        return np.broadcast_to(keep.reshape(keep.shape + (1,) * (array.ndim - 2)), array.shape)
    return np.ones(array.shape, dtype=bool)


def output_errors(expected: np.ndarray, got: np.ndarray, attention_mask: np.ndarray,
                  atol: float | None = None) -> dict:
    """max abs, mean abs, max rel, cosine and the share within ``atol``, on non-pad positions."""
    if expected.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {expected.shape}, artifact {got.shape}")
    keep = token_mask(expected, attention_mask)
    ref = expected[keep].astype(np.float64)
    out = got[keep].astype(np.float64)
    diff = np.abs(ref - out)
    if not np.all(np.isfinite(out)):
        nan = float("nan")
        return {"max_abs": nan, "mean_abs": nan, "max_rel": nan, "cosine": nan, "within_tol": 0.0, "count": int(ref.size)}
    denom = np.maximum(np.abs(ref), 1e-6)
    norm = np.linalg.norm(ref) * np.linalg.norm(out)
    return {
        "max_abs": float(diff.max(initial=0.0)),
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "max_rel": float((diff / denom).max(initial=0.0)),
        "cosine": float(ref @ out / norm) if norm > 0 else float(np.array_equal(ref, out)),
        "within_tol": float((diff <= atol).mean()) if atol is not None and diff.size else 1.0,
        "count": int(ref.size),
    }


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
    return {}


class TaskAgreement:
    """Accumulates, over batches, how often the artifact predicts what the reference predicts."""

    def __init__(self, task: str):
        self.task = task
        self.counts: dict[str, list[int]] = {}

    def _add(self, name: str, agree: np.ndarray) -> None:
        hit, total = self.counts.setdefault(name, [0, 0]), agree.size
        hit[0] += int(agree.sum())
        hit[1] += int(total)

    def update(self, expected: dict, got: dict, attention_mask: np.ndarray) -> None:
        ref, out = predictions(self.task, expected), predictions(self.task, got)
        keep = attention_mask.astype(bool)
        if self.task == "sequence-classification":
            self._add("argmax", ref["label"] == out["label"])
        elif self.task == "token-classification":
            self._add("label", (ref["label"] == out["label"])[keep])
        elif self.task == "masked-lm":
            self._add("top1", (ref["top1"] == out["top1"])[keep])
            self._add("top5", (out["top5"] == ref["top1"][..., None]).any(-1)[keep])
        elif self.task == "question-answering":
            self._add("start", ref["start"] == out["start"])
            self._add("end", ref["end"] == out["end"])
            self._add("exact_span", (ref["start"] == out["start"]) & (ref["end"] == out["end"]))

    def result(self) -> dict[str, float]:
        return {name: hit / total if total else float("nan") for name, (hit, total) in self.counts.items()}

    def headline(self) -> float | None:
        """The one agreement number a tolerance is checked against."""
        result = self.result()
        for name in ("argmax", "label", "top1", "exact_span"):
            if name in result:
                return result[name]
        return None


def accuracy(task: str, outputs_per_batch: list[dict], labels_per_batch: list[np.ndarray]) -> dict | None:
    """Task metric against known labels (sequence classification: accuracy)."""
    if task != "sequence-classification" or not labels_per_batch:
        return None
    hits = total = 0
    for outputs, labels in zip(outputs_per_batch, labels_per_batch):
        hits += int((predictions(task, outputs)["label"] == labels).sum())
        total += labels.size
    return {"name": "accuracy", "value": hits / total if total else float("nan")}
