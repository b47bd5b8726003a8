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
from .log import logger
from .models import POOLED_TASKS, ReferenceModel

DATA_SUFFIXES = (".txt", ".jsonl", ".csv")
# Random token batches: how many, how large, how long (unless a run says otherwise).
DEFAULT_BATCHES = 4
DEFAULT_BATCH_SIZE = 8
DEFAULT_RANDOM_LENGTH = 128


@dataclass
class Dataset:
    """Batches (dicts of int64 arrays) and, where the source had them, one label per example.

    ``windows``: for long texts split into overlapping windows (``core.text.Windows``), which
    rows belong to which example; the batches then hold one window per row."""

    batches: list[dict[str, np.ndarray]]
    labels: list[np.ndarray] | None = None
    source: str = "random"
    extra: dict = field(default_factory=dict)
    windows: object | None = None

    def __len__(self) -> int:
        return sum(len(b["input_ids"]) for b in self.batches)

    def describe(self) -> dict:
        """What a report says of this data: its source, size, which examples (seed or indices), the
        sequence lengths and padding it covers, and any truncation or windows."""
        found = {"source": self.source, "examples": len(self), "batches": len(self.batches),
                 "labels": self.labels is not None, **shape_summary(self.batches), **self.extra}
        if self.windows is not None:
            found.update(examples=self.windows.examples, windows=self.windows.describe())
        return found


def shape_summary(batches: list[dict]) -> dict:
    """The sequence lengths a set of batches covers and how its rows are padded."""
    masks = [np.asarray(b["attention_mask"]) for b in batches if "attention_mask" in b]
    if not masks:
        return {}
    rows = [m.reshape(-1, m.shape[-1]) for m in masks]
    real = np.concatenate([r.sum(-1) for r in rows])
    full = real == np.concatenate([np.full(len(r), r.shape[-1]) for r in rows])
    partial = (real > 0) & ~full
    left = partial & (np.concatenate([r[:, 0] for r in rows]) == 0)
    right = partial & ~left
    padded_lengths = sorted({int(m.shape[-1]) for m in masks})
    return {"lengths": {"min": int(real.min()), "max": int(real.max()),
                        "padded_to": padded_lengths},
            "padding": {"rows": int(len(real)), "full": int(full.sum()), "right_padded": int(right.sum()),
                        "left_padded": int(left.sum()), "length_1": int((real == 1).sum()),
                        "all_padding": int((real == 0).sum())}}


# Each run draws disjoint example sets, one per purpose: int8 calibration, the int8 fallback's
# scoring, and parity. Random sets differ by seed; a data file is split (shares below).
PURPOSES = ("calibration", "fallback", "parity")
RANDOM_SEEDS = {"parity": 0, "calibration": 1, "fallback": 2}
FILE_SHARES = {"calibration": 2, "fallback": 1, "parity": 1}
DEFAULT_CHOICES = 4  # choices per example in random multiple-choice batches


def check_sequence(ref: ReferenceModel, sequence: int) -> None:
    """Refuse a length the model cannot take (see the length rule in ``core.models``)."""
    if sequence < 1:
        raise DebertrtError(f"sequence length must be at least 1, got {sequence}")
    if ref.max_sequence is not None and sequence > ref.max_sequence:
        raise DebertrtError(
            f"sequence length {sequence} exceeds the model's maximum {ref.max_sequence}: {ref.name} has an absolute "
            f"position table (position_biased_input, max_position_embeddings {ref.max_sequence}); keep --max-length "
            f"and --profile sequence=… at {ref.max_sequence} or less (--truncate or --stride for longer texts)")


@dataclass(frozen=True)
class TokenSpace:
    """What random batches need to know of a model: its inputs and the ids they may hold."""

    input_names: tuple[str, ...]
    vocab_size: int
    pad_token_id: int = 0
    type_vocab_size: int = 0  # token_type_ids are random types below this, zeros when 0
    multiple_choice: bool = False  # inputs [batch, choices, sequence]
    left_padding: bool = True  # random rows may be padded at the start (not for heads that read position 0)

    @classmethod
    def of(cls, ref: ReferenceModel) -> "TokenSpace":
        return cls(tuple(ref.input_names), int(ref.config.vocab_size),
                   int(getattr(ref.config, "pad_token_id", 0) or 0), int(getattr(ref.config, "type_vocab_size", 0)),
                   multiple_choice=len(ref.input_axes) == 3, left_padding=ref.task not in POOLED_TASKS)


def token_rows(space: TokenSpace, lengths, left, sequence: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random token rows [rows, sequence]: row k has ``lengths[k]`` real tokens (0: all padding),
    padded at the start where ``left[k]``, else at the end."""
    vocab, pad = space.vocab_size, space.pad_token_id
    lengths, left = np.asarray(lengths), np.asarray(left, dtype=bool)
    ids = rng.integers(1, vocab, size=(len(lengths), sequence), dtype=np.int64)
    ids[ids == pad] = (pad + 1) % vocab
    positions = np.arange(sequence)[None, :]
    right_mask = positions < lengths[:, None]
    left_mask = positions >= (sequence - lengths)[:, None]
    mask = np.where(left[:, None], left_mask, right_mask).astype(np.int64)
    ids[mask == 0] = pad
    feed = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in space.input_names:
        types = (rng.integers(0, space.type_vocab_size, size=ids.shape, dtype=np.int64)
                 if space.type_vocab_size > 0 else np.zeros_like(ids))
        feed["token_type_ids"] = types * mask
    return {name: feed[name] for name in space.input_names if name in feed}


def _as_examples(space: TokenSpace, rows: dict[str, np.ndarray], choices: int) -> dict[str, np.ndarray]:
    """Rows -> [batch, choices, sequence] for a multiple-choice model (``choices`` consecutive rows
    per example); unchanged otherwise."""
    if not space.multiple_choice:
        return rows
    return {name: value.reshape(-1, choices, value.shape[-1]) for name, value in rows.items()}


def token_batch(space: TokenSpace, batch: int, sequence: int, rng: np.random.Generator,
                pad_fraction: float = 0.5, left_fraction: float = 0.5,
                choices: int = DEFAULT_CHOICES) -> dict[str, np.ndarray]:
    """Random tokens, [batch, sequence] ([batch, choices, sequence] for a multiple-choice model).

    Row 0 keeps the full length and row 1 has a single token, so every position and the shortest
    input are checked; each other row is padded with probability ``pad_fraction`` to a random length,
    at the start with probability ``left_fraction`` (where ``space.left_padding``), else at the end."""
    rows = batch * (choices if space.multiple_choice else 1)
    lengths = np.full(rows, sequence)
    padded = rng.random(rows) < pad_fraction
    lengths[padded] = rng.integers(1, sequence + 1, size=int(padded.sum()))
    left = padded & (rng.random(rows) < (left_fraction if space.left_padding else 0.0))
    lengths[0], left[0] = sequence, False
    if rows > 1:
        lengths[1] = 1
    return _as_examples(space, token_rows(space, lengths, left, sequence, rng), choices)


def padding_extremes(space: TokenSpace, sequence: int, seed: int = 0, choices: int = 2) -> dict[str, np.ndarray]:
    """One batch of every padding case: full length, right- and left-padded rows, single tokens at
    either end, lengths across 1 … ``sequence``, and a row that is all padding."""
    half = max(1, (sequence + 1) // 2)
    lengths = [sequence, 1, half, half, 1, 0, max(1, sequence - 1), min(2, sequence)]
    left = [False, False, False, True, True, False, True, False]
    if space.multiple_choice:  # whole examples: complete the last one
        extra = -len(lengths) % choices
        lengths, left = lengths + [sequence] * extra, left + [False] * extra
    rows = token_rows(space, lengths, left, sequence, np.random.default_rng(seed))
    return _as_examples(space, rows, choices)


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
    """Texts and labels (or None) from .txt, .jsonl or .csv. A text is a str, a (text, text_pair)
    tuple, or for multiple choice a (text, [choice, ...]) tuple.

    .txt: one example per non-empty line. .jsonl: objects with "text" (and optional
    "text_pair", "choices" (a list of strings), "label"). .csv: a header with a "text" column (and
    optional "text_pair", "choice0", "choice1", ..., "label"). A label is an integer: the class, or
    the index of the right choice.
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
            choices = record.get("choices")
            if choices is not None and (not isinstance(choices, list) or not choices
                                        or not all(isinstance(c, str) for c in choices)):
                raise DebertrtError(f"{path}:{number}: \"choices\" must be a non-empty list of strings")
            records.append(record)
    else:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "text" not in reader.fieldnames:
                raise DebertrtError(f"{path}: the CSV header needs a \"text\" column")
            choice_columns = sorted((c for c in reader.fieldnames if c.startswith("choice") and c[6:].isdigit()),
                                    key=lambda c: int(c[6:]))
            records = [r for r in reader if (r.get("text") or "").strip()]
        for r in records:
            if choice_columns:
                r["choices"] = [r[c] for c in choice_columns]
    if not records:
        raise DebertrtError(f"data file {str(path)!r} has no examples: give at least one non-empty text")
    texts = [(r["text"], list(r["choices"])) if r.get("choices") is not None else
             (r["text"], r["text_pair"]) if r.get("text_pair") else r["text"] for r in records]
    has_labels = all(r.get("label") not in (None, "") for r in records)
    labels = None
    if has_labels:
        try:
            labels = [int(r["label"]) for r in records]
        except (TypeError, ValueError) as exc:
            raise DebertrtError(f"{path}: labels must be integers (class ids, or the index of the right choice)") from exc
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


@dataclass(frozen=True)
class TextOptions:
    """How text examples longer than the limit are handled (never silently): refused (default),
    cut to the limit (``truncate``), or split into windows sharing ``stride`` tokens (token
    classification and question answering)."""

    truncate: bool = False
    stride: int | None = None

    def __post_init__(self):
        if self.truncate and self.stride is not None:
            raise DebertrtError("--truncate and --stride exclude each other: cut long examples, or split them into "
                                "windows, not both")
        if self.stride is not None and self.stride < 0:
            raise DebertrtError(f"--stride must be >= 0 (tokens shared by consecutive windows), got {self.stride}")


def datasets_for(ref: ReferenceModel, purposes, data: str | os.PathLike | None = None, *,
                 batches: int = DEFAULT_BATCHES, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_length: int | None = None, text: TextOptions = TextOptions()) -> dict[str, Dataset]:
    """One disjoint example set per purpose: a data file split by ``split_examples``, else the
    preset's own held-out sets, else random token batches with a seed per purpose."""
    purposes = list(purposes)
    if data is not None:
        count = len(read_examples(data)[0])
        parts = split_examples(count, purposes) if len(purposes) > 1 else {purposes[0]: list(range(count))}
        return {p: text_dataset(ref, data, batch_size=batch_size, max_length=max_length, indices=parts[p], text=text)
                for p in purposes}
    if ref.own_data is not None:
        return {p: ref.own_data(p) for p in purposes}
    default = DEFAULT_RANDOM_LENGTH if ref.max_sequence is None else min(DEFAULT_RANDOM_LENGTH, ref.max_sequence)
    sequence = max_length or default  # an explicit length is checked, not clipped
    return {p: random_dataset(ref, batches=batches, batch_size=batch_size, max_sequence=sequence,
                              seed=RANDOM_SEEDS[p]) for p in purposes}


def describe_tokenizer(ref: ReferenceModel) -> dict:
    """Which tokenizer a report's text went through: its class, fast or slow, and where it came from."""
    tokenizer = ref.tokenizer
    return {"class": type(tokenizer).__name__, "fast": bool(getattr(tokenizer, "is_fast", False)),
            "source": ref.tokenizer_source or "built in"}


def text_dataset(ref: ReferenceModel, path: str | os.PathLike, batch_size: int = 8,
                 max_length: int | None = None, indices: list[int] | None = None,
                 text: TextOptions = TextOptions()) -> Dataset:
    """Examples from a data file (those at ``indices``, 0-based, or all), tokenized with the
    checkpoint's tokenizer and padded per batch (on the side the tokenizer pads).

    Nothing is cut silently: an example longer than ``max_length`` (default: the model's maximum;
    no limit for a model that takes any length) is an error naming how many and how long, unless
    ``text.truncate`` cuts it (counted in the report) or ``text.stride`` splits it into windows
    (``core.text``)."""
    from . import text as T

    if ref.tokenizer is None:
        raise DebertrtError(
            f"{ref.name} has no tokenizer: text data needs a checkpoint directory with tokenizer files "
            f"(or leave out --data to use random token batches)")
    texts, labels = read_examples(path)
    numbers = [i + 1 for i in indices] if indices is not None else list(range(1, len(texts) + 1))
    extra = {"tokenizer": describe_tokenizer(ref)}
    if indices is not None:
        texts = [texts[i] for i in indices]
        labels = [labels[i] for i in indices] if labels is not None else None
        extra["example_numbers"] = numbers  # 1-based, in file order
    T.check_examples(texts, ref.task, path)
    if max_length is not None:
        check_sequence(ref, max_length)
    limit = max_length or ref.max_sequence
    tokenizer = ref.tokenizer
    if ref.task in POOLED_TASKS and tokenizer.padding_side == "left":
        logger.warning("%s pads on the left, but the %s head reads the first position: padded examples are "
                       "judged on a pad token's output (as in PyTorch); save the tokenizer with "
                       "padding_side='right'", type(tokenizer).__name__, ref.task)
    windows = None
    if text.stride is not None:
        rows, windows = T.split(tokenizer, ref.task, texts, limit, text.stride)
        labels = None  # per-example labels do not apply to windows
    else:
        rows = [T.encode(tokenizer, t, ref.task) for t in texts]
        lengths = [max(len(r["input_ids"]) for r in example) for example in rows]
        too_long = [k for k, n in enumerate(lengths) if limit is not None and n > limit]
        if too_long and not text.truncate:
            raise T.too_long_error(ref, path, too_long, lengths, numbers, limit)
        if too_long:
            for k in too_long:
                rows[k] = T.encode(tokenizer, texts[k], ref.task, limit)
            extra["truncated"] = {"examples": len(too_long), "limit": limit, "longest": max(lengths)}
    batches, places = T.pad_batches(tokenizer, rows, batch_size, ref.input_names, ref.task)
    if windows is not None:
        windows.place(places)
    label_batches = None
    if labels is not None:
        label_batches = [np.asarray(labels[s:s + batch_size], dtype=np.int64) for s in range(0, len(labels), batch_size)]
    return Dataset(batches, label_batches, source=str(path), extra=extra, windows=windows)
