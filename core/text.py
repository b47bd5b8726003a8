"""Text examples as model rows: encoding (pairs, choices), padding into batches, the length check,
and long texts split into overlapping windows whose answers are merged back per example.

Token classification and question answering take text longer than the limit as the transformers
pipelines do: the fast tokenizer splits it (``return_overflowing_tokens`` with ``stride``) into
windows of at most ``max_length`` tokens, consecutive windows sharing ``stride`` tokens of the text
(question answering: of the context; the question is repeated in every window). Answers are
merged back per example:

* token classification: each token of the text takes its logits from the window where it has the
  most context on both sides (ties: the earlier window), then its label is their argmax;
* question answering: the answer is the best span over all windows, scored as the
  question-answering pipeline does (softmax over each window's context tokens, p(start)·p(end),
  start ≤ end < start + ``MAX_ANSWER_TOKENS``), as character offsets in the context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import DebertrtError, InternalError, first_line
from .models import CHOICE_TASKS

WINDOW_TASKS = ("token-classification", "question-answering")
MAX_ANSWER_TOKENS = 15  # the question-answering pipeline's default max_answer_len
ROW_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _has_choices(text) -> bool:
    return isinstance(text, tuple) and isinstance(text[1], list)


def check_examples(texts: list, task: str, path) -> None:
    """Multiple-choice data has choices (the same number in every example); other data has none."""
    choice = task in CHOICE_TASKS
    for number, text in enumerate(texts, 1):
        if choice and not _has_choices(text):
            raise DebertrtError(f"{path}: example {number} has no choices: multiple-choice data needs \"choices\" "
                                f"(a list, JSONL) or choice0, choice1, ... columns (CSV)")
        if not choice and _has_choices(text):
            raise DebertrtError(f"{path}: example {number} has choices, which --task {task} does not take; "
                                f"use --task multiple-choice")
    counts = sorted({len(t[1]) for t in texts}) if choice else []
    if len(counts) > 1:
        raise DebertrtError(f"{path}: the examples have {', '.join(map(str, counts))} choices; give every example "
                            f"the same number (the inputs are [batch, choices, sequence])")


def encode(tokenizer, text, task: str, limit: int | None = None) -> list[dict]:
    """One example as token rows (one per choice for multiple choice), cut to ``limit`` tokens when
    given (question answering cuts the context, never the question)."""
    if _has_choices(text):
        pairs = [(text[0], choice) for choice in text[1]]
    else:
        pairs = [text if isinstance(text, tuple) else (text, None)]
    options = {}
    if limit is not None:
        options = dict(truncation="only_second" if task == "question-answering" else "longest_first",
                       max_length=limit)
    try:
        return [{k: list(v) for k, v in tokenizer(first, second, **options).items() if k in ROW_KEYS}
                for first, second in pairs]
    except Exception as exc:  # tokenizers refuse e.g. a question longer than the limit
        raise DebertrtError(f"cannot tokenize an example within {limit} tokens: {first_line(exc)}") from exc


def too_long_error(ref, path, too_long: list[int], lengths: list[int], numbers: list[int], limit: int):
    """The one-line refusal for examples over the limit, naming how many, how long and the fixes."""
    longest = max(too_long, key=lambda k: lengths[k])
    fixes = [f"--truncate to cut them to {limit} tokens"]
    if ref.task in WINDOW_TASKS:
        fixes.append("--stride N to split them into overlapping windows")
    if ref.max_sequence is None:
        fixes.append("a larger --max-length (the model takes any length; an engine profile must cover it)")
    elif limit < ref.max_sequence:
        fixes.append(f"a larger --max-length (up to the model's {ref.max_sequence})")
    return DebertrtError(
        f"{path}: {len(too_long)} of {len(lengths)} examples are longer than {limit} tokens (longest: example "
        f"{numbers[longest]}, {lengths[longest]} tokens) and nothing is cut silently: pass " + ", or ".join(fixes))


def pad_batches(tokenizer, items: list[list[dict]], batch_size: int, input_names, task: str):
    """Items (an example's rows) in batches of ``batch_size``, padded by the tokenizer to the longest
    row of the batch; multiple-choice batches are [batch, choices, sequence]. Returns the batches
    and, per row, (batch, row, columns the padding shifted it by)."""
    batches, places = [], []
    for start in range(0, len(items), batch_size):
        group = items[start:start + batch_size]
        rows = [row for item in group for row in item]
        padded = tokenizer.pad(rows, padding=True, return_tensors="np")
        ids = np.asarray(padded["input_ids"], dtype=np.int64)
        batch = {}
        for name in input_names:
            if name in padded:
                batch[name] = np.asarray(padded[name], dtype=np.int64)
            elif name == "token_type_ids":
                batch[name] = np.zeros_like(ids)
        sequence = ids.shape[-1]
        for k, row in enumerate(rows):
            shift = sequence - len(row["input_ids"]) if tokenizer.padding_side == "left" else 0
            places.append((len(batches), k, shift))
        if task in CHOICE_TASKS:
            batch = {name: value.reshape(len(group), -1, sequence) for name, value in batch.items()}
        batches.append(batch)
    return batches, places


# ---------------------------------------------------------------------------- windows


@dataclass
class Window:
    """One window of one example: where its text tokens sit in its row."""

    example: int
    start: int                  # token classification: the example token at the window's first text token
    columns: np.ndarray         # row positions of the text (question answering: context) tokens
    offsets: np.ndarray | None  # question answering: their character offsets in the context
    batch: int = -1
    row: int = -1


@dataclass
class Windows:
    """Which rows of a dataset are windows of which example, and how to merge their answers."""

    task: str
    max_length: int
    stride: int
    tokens: list[int]           # tokens per example (question answering: context tokens)
    items: list[Window] = field(default_factory=list)

    @property
    def examples(self) -> int:
        return len(self.tokens)

    def describe(self) -> dict:
        per_example = np.bincount([w.example for w in self.items], minlength=self.examples)
        return {"max_length": self.max_length, "stride": self.stride, "windows": len(self.items),
                "examples_split": int((per_example > 1).sum())}

    def place(self, places: list[tuple[int, int, int]]) -> None:
        """Record where padding put each window (``pad_batches``' places, one per row, in order)."""
        if len(places) != len(self.items):
            raise InternalError(f"{len(places)} padded rows for {len(self.items)} windows")
        for window, (batch, row, shift) in zip(self.items, places):
            window.batch, window.row, window.columns = batch, row, window.columns + shift

    def merge(self, outputs: list[dict]) -> list:
        """Per example: token labels (token classification) or the (start, end) character span of the
        answer in the context (question answering), from the outputs of every batch."""
        if self.task == "token-classification":
            return self._merge_tokens(outputs)
        return self._merge_spans(outputs)

    def _merge_tokens(self, outputs: list[dict]) -> list[np.ndarray]:
        context = [np.full(n, -1) for n in self.tokens]
        merged = [None] * self.examples
        for w in self.items:
            logits = outputs[w.batch]["logits"][w.row]
            if merged[w.example] is None:
                merged[w.example] = np.zeros((self.tokens[w.example], logits.shape[-1]), logits.dtype)
            n = len(w.columns)
            for j, column in enumerate(w.columns):
                token, room = w.start + j, min(j, n - 1 - j)
                if room > context[w.example][token]:
                    context[w.example][token] = room
                    merged[w.example][token] = logits[column]
        return [m.argmax(-1) for m in merged]

    def _merge_spans(self, outputs: list[dict]) -> list[tuple[int, int]]:
        best: list[tuple[float, tuple[int, int]]] = [(-1.0, (0, 0))] * self.examples
        for w in self.items:
            start = _softmax(outputs[w.batch]["start_logits"][w.row][w.columns])
            end = _softmax(outputs[w.batch]["end_logits"][w.row][w.columns])
            scores = np.triu(np.outer(start, end))
            scores = np.tril(scores, MAX_ANSWER_TOKENS - 1)
            i, j = np.unravel_index(int(scores.argmax()), scores.shape)
            if scores[i, j] > best[w.example][0]:
                best[w.example] = (float(scores[i, j]), (int(w.offsets[i][0]), int(w.offsets[j][1])))
        return [span for _, span in best]

    def agreement(self, expected: list[dict], got: list[dict]) -> tuple[str, np.ndarray]:
        """The merged answers of the reference and of an artifact, compared: (name, per-answer hits)."""
        ref, out = self.merge(expected), self.merge(got)
        if self.task == "token-classification":
            return "merged_label", np.concatenate([a == b for a, b in zip(ref, out)])
        return "merged_span", np.array([a == b for a, b in zip(ref, out)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


def _check_room(tokenizer, k: int, question: str | None, limit: int, stride: int) -> None:
    """Refuse a stride that leaves a window no new text (the tokenizers library would panic)."""
    specials = tokenizer.num_special_tokens_to_add(pair=question is not None)
    asked = len(tokenizer(question, add_special_tokens=False)["input_ids"]) if question is not None else 0
    room = limit - specials - asked
    if stride >= room:
        what = f"{specials} special tokens" + (f" and the question's {asked} tokens" if question is not None else "")
        raise DebertrtError(f"example {k + 1}: windows of {limit} tokens have room for {max(room, 0)} tokens of text "
                            f"after {what}, not more than --stride {stride}; lower --stride or raise --max-length")


def split(tokenizer, task: str, texts: list, limit: int | None, stride: int) -> tuple[list[list[dict]], Windows]:
    """Every example as windows of at most ``limit`` tokens sharing ``stride`` tokens (one item of
    one row per window), and the ``Windows`` that maps them back."""
    if task not in WINDOW_TASKS:
        raise DebertrtError(f"--stride splits long texts into windows for {' and '.join(WINDOW_TASKS)}, whose answers "
                            f"merge back per token or span; for {task} use --truncate or a larger --max-length")
    if limit is None:
        raise DebertrtError("--stride needs a window length: pass --max-length")
    if not getattr(tokenizer, "is_fast", False):
        raise DebertrtError("--stride needs a fast tokenizer (it maps windows back by offsets); this checkpoint's "
                            "is slow: add its tokenizer.json, or use --truncate")
    qa = task == "question-answering"
    windows = Windows(task, limit, stride, tokens=[])
    items = []
    for k, text in enumerate(texts):
        if qa != isinstance(text, tuple):
            raise DebertrtError(f"example {k + 1}: --stride with {task} takes "
                                + ("a question (\"text\") and a context (\"text_pair\")" if qa else "single texts "
                                   "(no \"text_pair\")"))
        first, second = text if qa else (text, None)
        _check_room(tokenizer, k, first if qa else None, limit, stride)
        try:
            enc = tokenizer(first, second, truncation="only_second" if qa else True, max_length=limit, stride=stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True)
        except Exception as exc:
            raise DebertrtError(f"example {k + 1}: cannot split into windows of {limit} tokens sharing {stride}: "
                                f"{first_line(exc)}") from exc
        text_ids = tokenizer(second if qa else first, add_special_tokens=False)["input_ids"]
        windows.tokens.append(len(text_ids))
        start = 0
        for w in range(len(enc["input_ids"])):
            sequence_ids = enc.sequence_ids(w)
            columns = np.array([j for j, s in enumerate(sequence_ids) if s == (1 if qa else 0)], dtype=np.int64)
            row_ids = [enc["input_ids"][w][j] for j in columns]
            if row_ids != text_ids[start:start + len(columns)]:
                raise InternalError(f"example {k + 1}: window {w} does not continue the text where expected")
            offsets = np.asarray(enc["offset_mapping"][w])[columns] if qa else None
            windows.items.append(Window(k, start, columns, offsets))
            items.append([{key: list(enc[key][w]) for key in ROW_KEYS if key in enc}])
            start += len(columns) - stride
    return items, windows
