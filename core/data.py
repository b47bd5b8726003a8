"""Input batches: random token batches with padding, or examples read from a data file.

A batch is a dict of int64 arrays named like the ONNX inputs; a data file may also carry
labels, returned beside the batches so a report can score the task.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DebertrtError
from .models import ReferenceModel

DATA_SUFFIXES = (".txt", ".jsonl", ".csv")
# Random token batches: how many, how large, how long (unless a run says otherwise).
DEFAULT_BATCHES = 4
DEFAULT_BATCH_SIZE = 8
DEFAULT_RANDOM_LENGTH = 128


@dataclass
class Dataset:
    """Batches (dicts of int64 arrays) and, where the source had them, one label per example."""

    batches: list[dict[str, np.ndarray]]
    labels: list[np.ndarray] | None = None
    source: str = "random"
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(b["input_ids"]) for b in self.batches)

    def describe(self) -> dict:
        """What a report says of this data: its source, size, and which examples (seed or indices)."""
        return {"source": self.source, "examples": len(self), "batches": len(self.batches),
                "labels": self.labels is not None, **self.extra}


# Each run draws disjoint example sets, one per purpose: int8 calibration, the int8 fallback's
# scoring, and parity. Random sets differ by seed; a data file is split (shares below).
PURPOSES = ("calibration", "fallback", "parity")
RANDOM_SEEDS = {"parity": 0, "calibration": 1, "fallback": 2}
FILE_SHARES = {"calibration": 2, "fallback": 1, "parity": 1}


def check_sequence(ref: ReferenceModel, sequence: int) -> None:
    if sequence > ref.max_sequence:
        raise DebertrtError(
            f"sequence length {sequence} exceeds the model's maximum {ref.max_sequence} "
            f"(max_position_embeddings): truncate the inputs (--max-length) or use a model that supports it")
    if sequence < 1:
        raise DebertrtError(f"sequence length must be at least 1, got {sequence}")


@dataclass(frozen=True)
class TokenSpace:
    """What random batches need to know of a model: its inputs and the ids they may hold."""

    input_names: tuple[str, ...]
    vocab_size: int
    pad_token_id: int = 0
    type_vocab_size: int = 0  # token_type_ids are random types below this, zeros when 0

    @classmethod
    def of(cls, ref: ReferenceModel) -> "TokenSpace":
        return cls(tuple(ref.input_names), int(ref.config.vocab_size),
                   int(getattr(ref.config, "pad_token_id", 0) or 0), int(getattr(ref.config, "type_vocab_size", 0)))


def token_batch(space: TokenSpace, batch: int, sequence: int, rng: np.random.Generator,
                pad_fraction: float = 0.5) -> dict[str, np.ndarray]:
    """Random tokens; after the first row (kept full length) rows get random lengths, padded at the end."""
    vocab, pad = space.vocab_size, space.pad_token_id
    ids = rng.integers(1, vocab, size=(batch, sequence), dtype=np.int64)
    ids[ids == pad] = (pad + 1) % vocab
    lengths = np.full(batch, sequence)
    padded = rng.random(batch) < pad_fraction
    padded[0] = False  # one full-length row, so every position is checked somewhere
    lengths[padded] = rng.integers(1, sequence + 1, size=int(padded.sum()))
    mask = (np.arange(sequence)[None, :] < lengths[:, None]).astype(np.int64)
    ids[mask == 0] = pad
    feed = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in space.input_names:
        types = (rng.integers(0, space.type_vocab_size, size=(batch, sequence), dtype=np.int64)
                 if space.type_vocab_size > 0 else np.zeros_like(ids))
        feed["token_type_ids"] = types * mask
    return {name: feed[name] for name in space.input_names if name in feed}


def token_dataset(space: TokenSpace, batches: int, batch_size: int, max_sequence: int, seed: int = 0,
                  source: str = "random") -> Dataset:
    """Batches of random sequence lengths in [1, max_sequence] (the first one full length), with padding."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_sequence + 1, size=batches)
    lengths[0] = max_sequence
    return Dataset([token_batch(space, batch_size, int(s), rng) for s in lengths], source=source,
                   extra={"seed": seed, "max_sequence": max_sequence})


def random_batch(ref: ReferenceModel, batch: int, sequence: int, rng: np.random.Generator,
                 pad_fraction: float = 0.5) -> dict[str, np.ndarray]:
    """``token_batch`` for a reference model, refusing sequences it cannot take."""
    check_sequence(ref, sequence)
    return token_batch(TokenSpace.of(ref), batch, sequence, rng, pad_fraction)


def random_dataset(ref: ReferenceModel, batches: int = 4, batch_size: int = 4, max_sequence: int = 128,
                   seed: int = 0) -> Dataset:
    """``token_dataset`` for a reference model, refusing sequences it cannot take."""
    check_sequence(ref, max_sequence)
    return token_dataset(TokenSpace.of(ref), batches, batch_size, max_sequence, seed)


def read_examples(path: str | os.PathLike) -> tuple[list, list | None]:
    """Texts (str or (text, text_pair)) and labels (or None) from .txt, .jsonl or .csv.

    .txt: one example per non-empty line. .jsonl: objects with "text" (and optional
    "text_pair", "label"). .csv: a header with a "text" column (and optional "text_pair",
    "label").
    """
    path = Path(path)
    if not path.is_file():
        raise DebertrtError(f"data file {str(path)!r} not found")
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise DebertrtError(f"data file {str(path)!r}: use one of {', '.join(DATA_SUFFIXES)}")
    if suffix == ".txt":
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        records = [{"text": t} for t in texts]
    elif suffix == ".jsonl":
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DebertrtError(f"{path}:{number}: not valid JSON ({exc.msg}); write one object per line") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DebertrtError(f"{path}:{number}: each line needs a string field \"text\"")
            records.append(record)
    else:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "text" not in reader.fieldnames:
                raise DebertrtError(f"{path}: the CSV header needs a \"text\" column")
            records = [r for r in reader if (r.get("text") or "").strip()]
    if not records:
        raise DebertrtError(f"data file {str(path)!r} has no examples: give at least one non-empty text")
    texts = [(r["text"], r["text_pair"]) if r.get("text_pair") else r["text"] for r in records]
    has_labels = all(r.get("label") not in (None, "") for r in records)
    labels = None
    if has_labels:
        try:
            labels = [int(r["label"]) for r in records]
        except (TypeError, ValueError) as exc:
            raise DebertrtError(f"{path}: labels must be integers (class ids)") from exc
    return texts, labels


def split_examples(count: int, purposes, seed: int = 0) -> dict[str, list[int]]:
    """Disjoint example indices per purpose (``FILE_SHARES`` of a seeded permutation), each sorted."""
    purposes = list(purposes)
    if count < len(purposes):
        raise DebertrtError(f"the data has {count} example(s): disjoint {', '.join(purposes)} sets need at least "
                            f"{len(purposes)}; add examples (or give the evaluation set separately)")
    order = np.random.default_rng(seed).permutation(count)
    shares = np.array([FILE_SHARES[p] for p in purposes], dtype=float)
    cuts = np.floor(np.cumsum(shares) / shares.sum() * count).astype(int)
    cuts = np.maximum(cuts, np.arange(1, len(purposes) + 1))  # every set gets at least one example
    starts = np.concatenate([[0], cuts[:-1]])
    return {p: sorted(int(i) for i in order[a:b]) for p, a, b in zip(purposes, starts, cuts)}


def datasets_for(ref: ReferenceModel, purposes, data: str | os.PathLike | None = None, *,
                 batches: int = DEFAULT_BATCHES, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_length: int | None = None) -> dict[str, Dataset]:
    """One disjoint example set per purpose: a data file split by ``split_examples``, else the
    preset's own held-out sets, else random token batches with a seed per purpose."""
    purposes = list(purposes)
    if data is not None:
        count = len(read_examples(data)[0])
        parts = split_examples(count, purposes) if len(purposes) > 1 else {purposes[0]: list(range(count))}
        return {p: text_dataset(ref, data, batch_size=batch_size, max_length=max_length, indices=parts[p])
                for p in purposes}
    if ref.own_data is not None:
        return {p: ref.own_data(p) for p in purposes}
    sequence = max_length or min(DEFAULT_RANDOM_LENGTH, ref.max_sequence)  # an explicit length is checked, not clipped
    return {p: random_dataset(ref, batches=batches, batch_size=batch_size, max_sequence=sequence,
                              seed=RANDOM_SEEDS[p]) for p in purposes}


def text_dataset(ref: ReferenceModel, path: str | os.PathLike, batch_size: int = 8,
                 max_length: int | None = None, indices: list[int] | None = None) -> Dataset:
    """Examples from a data file (those at ``indices``, 0-based, or all), tokenized with the
    checkpoint's tokenizer."""
    if ref.tokenizer is None:
        raise DebertrtError(
            f"{ref.name} has no tokenizer: text data needs a checkpoint directory with tokenizer files "
            f"(or leave out --data to use random token batches)")
    texts, labels = read_examples(path)
    extra = {}
    if indices is not None:
        texts = [texts[i] for i in indices]
        labels = [labels[i] for i in indices] if labels is not None else None
        extra["example_numbers"] = [i + 1 for i in indices]  # 1-based, in file order
    max_length = min(max_length or ref.max_sequence, ref.max_sequence)
    batches, label_batches = [], []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        pairs = [t if isinstance(t, tuple) else (t, None) for t in chunk]
        first = [p[0] for p in pairs]
        second = [p[1] for p in pairs] if any(p[1] for p in pairs) else None
        enc = ref.tokenizer(first, second, padding=True, truncation=True, max_length=max_length,
                            return_tensors="np")
        batch = {name: np.asarray(enc[name], dtype=np.int64) for name in ref.input_names if name in enc}
        if "token_type_ids" in ref.input_names and "token_type_ids" not in batch:
            batch["token_type_ids"] = np.zeros_like(batch["input_ids"])
        batches.append(batch)
        if labels is not None:
            label_batches.append(np.asarray(labels[start:start + batch_size], dtype=np.int64))
    return Dataset(batches, label_batches if labels is not None else None, source=str(path), extra=extra)
