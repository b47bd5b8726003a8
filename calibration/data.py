"""Examples for the precision passes: default sets per purpose (calibration, fallback scoring),
random ids synthesised from the graph alone, checks before use, and ONNX Runtime feeds."""

from __future__ import annotations


import numpy as np

from debertrt.core.errors import DebertrtError
from debertrt.core.data import (DEFAULT_BATCH_SIZE, DEFAULT_BATCHES, DEFAULT_RANDOM_LENGTH, RANDOM_SEEDS, Dataset,
                                TokenSpace, datasets_for, token_dataset)


def default_dataset(purpose: str, ref=None, model=None, *, batches: int = DEFAULT_BATCHES,
                    batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None) -> Dataset:
    """The examples a precision pass uses for ``purpose`` ("calibration" or "fallback") when none are
    given: ``ref``'s own held-out set or random token batches (``core.data.datasets_for``), or, with
    no reference model, random ids for the graph ``model`` (vocabulary read from its word-embedding
    Gather). Each purpose has its own seed, so the sets are disjoint."""
    if ref is not None:
        return datasets_for(ref, [purpose], batches=batches, batch_size=batch_size, max_length=max_length)[purpose]
    if model is None:
        raise DebertrtError("no calibration data: pass a data file, a reference model or the graph")
    return graph_random_dataset(model, batches=batches, batch_size=batch_size,
                                max_sequence=max_length or DEFAULT_RANDOM_LENGTH, seed=RANDOM_SEEDS[purpose])


def vocab_size(model) -> int | None:
    """Rows of the embedding table that ``input_ids`` indexes (None when not found)."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == "input_ids" \
                and node.input[0] in inits:
            return int(inits[node.input[0]].dims[0])
    return None


def graph_random_dataset(model, batches: int, batch_size: int, max_sequence: int, seed: int = 0) -> Dataset:
    """Random ids (with padded rows) for a graph whose reference model is unknown."""
    vocab = vocab_size(model)
    if vocab is None:
        raise DebertrtError("cannot tell the vocabulary size from the graph: pass calibration data or --model")
    ranks = {len(i.type.tensor_type.shape.dim) for i in model.graph.input}
    space = TokenSpace(tuple(i.name for i in model.graph.input), vocab, multiple_choice=ranks == {3})
    return token_dataset(space, batches, batch_size, max_sequence, seed, source="random (from the graph)")


def check_dataset(dataset: Dataset, input_names, vocab: int | None = None, what: str = "calibration") -> None:
    """Raise a ``DebertrtError`` naming the first problem with ``dataset`` for a graph with ``input_names``."""
    if dataset is None or not getattr(dataset, "batches", None):
        raise DebertrtError(f"{what} data is empty: give at least one example")
    input_names = list(input_names)
    for k, batch in enumerate(dataset.batches):
        where = f"{what} batch {k}"
        if not isinstance(batch, dict):
            raise DebertrtError(f"{where}: expected a dict of arrays named like the model inputs, got "
                                f"{type(batch).__name__}")
        missing = [n for n in input_names if n not in batch]
        if missing:
            raise DebertrtError(f"{where}: inputs {missing} are missing (the model takes {input_names})")
        shape = None
        for name in input_names:
            arr = np.asarray(batch[name])
            if arr.dtype.kind not in "iu":
                raise DebertrtError(f"{where}: {name} must hold integers, got {arr.dtype}")
            if arr.ndim not in (2, 3) or arr.size == 0:
                raise DebertrtError(f"{where}: {name} must be a non-empty [batch, sequence] (or [batch, choices, "
                                    f"sequence]) array, got shape {arr.shape}")
            if shape is not None and arr.shape != shape:
                raise DebertrtError(f"{where}: {name} has shape {arr.shape}, other inputs {shape}")
            shape = arr.shape
        if "attention_mask" in batch and not np.isin(np.asarray(batch["attention_mask"]), (0, 1)).all():
            raise DebertrtError(f"{where}: attention_mask must hold only 0 and 1")
        if "input_ids" in batch:
            ids = np.asarray(batch["input_ids"])
            if ids.min() < 0 or (vocab is not None and ids.max() >= vocab):
                raise DebertrtError(f"{where}: input_ids outside the vocabulary [0, {vocab}) "
                                    f"(min {ids.min()}, max {ids.max()}): was the data tokenized for this model?")
    if dataset.labels is not None:
        if len(dataset.labels) != len(dataset.batches) or any(
                len(np.asarray(l)) != len(np.asarray(b[input_names[0]])) for l, b in zip(dataset.labels,
                                                                                        dataset.batches)):
            raise DebertrtError(f"{what} data: labels do not match the batches (one label per example)")


def feeds(dataset: Dataset, input_names) -> list[dict[str, np.ndarray]]:
    """The batches as ONNX Runtime feeds (int64, only the graph's inputs)."""
    return [{n: np.ascontiguousarray(np.asarray(b[n], dtype=np.int64)) for n in input_names}
            for b in dataset.batches]


class BatchReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over prepared feeds."""

    def __init__(self, feed_list: list[dict]):
        self._feeds = list(feed_list)
        self._next = 0

    def get_next(self):
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def __len__(self):
        return len(self._feeds)

    def rewind(self):
        self._next = 0

    def set_range(self, start_index: int, end_index: int):
        self._feeds = self._feeds[start_index:end_index]
        self._next = 0
