"""Text in, predictions out: the tokenization and task post-processing of the served pipeline.

This module needs only NumPy and ``tokenizers``: ``debertrt export-triton`` copies it into
the model repository beside the Python-backend models (as ``debertrt_text.py``), so a
Triton server runs the tokenizer and post-processing steps without torch or debertrt.

Contract between the steps (per request, ``B`` texts, ``L`` positions after padding):

* ``encode`` -> the model's inputs (``input_ids``, ``attention_mask`` and ``token_type_ids``
  only when the model takes it; int64 ``[B, L]``), ``OFFSETS`` (int32 ``[B, L, 2]``,
  character span of each token in its own text) and ``SEQUENCE_IDS`` (int32 ``[B, L]``:
  0 first text, 1 second text, -1 special tokens and padding).
* Nothing is truncated: a text longer than ``max_length`` tokens is a ``TextError``.
  ``L`` is the longest text rounded up to ``pad_to_multiple_of`` (capped at
  ``max_length``, at least ``min_length``), so Triton's dynamic batcher, which merges only
  requests of equal shape, finds more of them; padded positions are masked and change no
  prediction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

NO_SEQUENCE = -1
MAX_ANSWER_TOKENS = 30
TASKS = ("sequence-classification", "token-classification", "question-answering")
# What the post-processing step answers per task: name -> (dtype, dims without the batch
# dimension; "labels" is the number of labels).
TASK_OUTPUTS = {
    "sequence-classification": {"LABEL": ("bytes", [1]), "SCORE": ("float32", [1]), "SCORES": ("float32", ["labels"])},
    "token-classification": {"TOKEN_LABEL_IDS": ("int32", [-1]), "ENTITIES": ("bytes", [1])},
    "question-answering": {"ANSWER": ("bytes", [1]), "ANSWER_START": ("int32", [1]), "ANSWER_END": ("int32", [1]),
                           "START_TOKEN": ("int32", [1]), "END_TOKEN": ("int32", [1]), "SCORE": ("float32", [1])},
}


class TextError(ValueError):
    """A request the pipeline refuses (the client's to fix): Triton answers it with INVALID_ARG (HTTP 400)."""


def decode_texts(array, what: str = "text") -> list[str]:
    """A Triton BYTES tensor ``[B, 1]`` (numpy object array of bytes) -> ``B`` strings."""
    values = np.asarray(array, dtype=object).reshape(-1)
    texts = []
    for i, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise TextError(f"{what} {i} is not UTF-8: send UTF-8 encoded text") from None
        texts.append(str(value))
    return texts


@dataclass
class TextEncoder:
    """A fast tokenizer (``tokenizer.json``) producing the model's inputs, without truncation."""

    tokenizer_file: str
    input_names: tuple[str, ...]
    max_length: int
    pad_id: int = 0
    pad_to_multiple_of: int = 1
    needs_pair: bool = False
    min_length: int = 1  # the engine profiles' shortest sequence: shorter texts are padded up to it

    def __post_init__(self):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        self.tokenizer.no_truncation()  # a saved truncation setting must not cut texts silently
        self.tokenizer.no_padding()

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        if not texts:
            raise TextError("no text in the request: send at least one")
        if self.needs_pair and pairs is None:
            raise TextError("this model answers a question about a context: send TEXT (question) and TEXT_PAIR "
                            "(context)")
        if pairs is not None and len(pairs) != len(texts):
            raise TextError(f"{len(texts)} TEXT but {len(pairs)} TEXT_PAIR values: send one pair per text")
        for what, values in (("TEXT", texts), ("TEXT_PAIR", pairs or [])):
            for i, value in enumerate(values):
                if not value.strip():
                    raise TextError(f"{what} {i} is empty: send at least one non-blank character")
        inputs = texts if pairs is None else list(zip(texts, pairs))
        encodings = self.tokenizer.encode_batch(inputs, add_special_tokens=True)
        for i, encoding in enumerate(encodings):
            if len(encoding.ids) > self.max_length:
                raise TextError(
                    f"text {i} is {len(encoding.ids)} tokens long but the model takes at most {self.max_length}: "
                    f"shorten or split it (nothing is truncated)")
        longest = max(len(e.ids) for e in encodings)
        step = max(1, int(self.pad_to_multiple_of))
        length = min(self.max_length, max(self.min_length, -(-longest // step) * step))
        batch = len(encodings)
        arrays = {
            "input_ids": np.full((batch, length), self.pad_id, dtype=np.int64),
            "attention_mask": np.zeros((batch, length), dtype=np.int64),
            "token_type_ids": np.zeros((batch, length), dtype=np.int64),
            "OFFSETS": np.zeros((batch, length, 2), dtype=np.int32),
            "SEQUENCE_IDS": np.full((batch, length), NO_SEQUENCE, dtype=np.int32),
        }
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            arrays["input_ids"][row, :n] = encoding.ids
            arrays["attention_mask"][row, :n] = encoding.attention_mask
            arrays["token_type_ids"][row, :n] = encoding.type_ids
            arrays["OFFSETS"][row, :n] = np.asarray(encoding.offsets, dtype=np.int32).reshape(n, 2)
            arrays["SEQUENCE_IDS"][row, :n] = [NO_SEQUENCE if s is None else s for s in encoding.sequence_ids]
        model_inputs = {name: arrays[name] for name in self.input_names}
        return {**model_inputs, "OFFSETS": arrays["OFFSETS"], "SEQUENCE_IDS": arrays["SEQUENCE_IDS"]}


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def classify(logits: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
    """Sequence classification: ``LABEL`` (BYTES [B, 1]), ``SCORE`` [B, 1] and ``SCORES`` [B, C] (softmax)."""
    probs = softmax(logits)
    best = probs.argmax(-1)
    return {
        "LABEL": np.array([[labels[i].encode()] for i in best], dtype=object).reshape(-1, 1),
        "SCORE": probs[np.arange(len(best)), best].astype(np.float32).reshape(-1, 1),
        "SCORES": probs.astype(np.float32),
    }


def _entity_type(label: str) -> tuple[str, bool]:
    """``B-PER`` -> ("PER", True), ``I-PER`` -> ("PER", False), ``PER`` -> ("PER", False)."""
    if len(label) > 2 and label[1] == "-" and label[0] in "BI":
        return label[2:], label[0] == "B"
    return label, False


def token_entities(logits: np.ndarray, sequence_ids: np.ndarray, offsets: np.ndarray, texts: list[str],
                   labels: list[str], attention_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Token classification: ``TOKEN_LABEL_IDS`` (int32 [B, L], -1 at padding) and ``ENTITIES``
    (BYTES [B, 1], a JSON list per text of {entity, score, start, end, word}).

    Entities group neighbouring tokens of the text with the same type (``B-`` starts a new one,
    label ``O`` is none); score is the mean of their tokens' probabilities, start/end are
    character offsets into the text.
    """
    probs = softmax(logits)
    ids = probs.argmax(-1).astype(np.int32)
    valid = (attention_mask.astype(bool) if attention_mask is not None
             else np.ones(ids.shape, dtype=bool))
    token_ids = np.where(valid, ids, -1).astype(np.int32)
    entities = []
    for row, text in enumerate(texts):
        found, current = [], None
        for pos in range(ids.shape[1]):
            if sequence_ids[row, pos] != 0:
                current = None
                continue
            label = labels[ids[row, pos]]
            kind, begins = _entity_type(label)
            if label == "O":
                current = None
                continue
            start, end = (int(v) for v in offsets[row, pos])
            score = float(probs[row, pos, ids[row, pos]])
            if current is not None and current["entity"] == kind and not begins:
                current["end"] = end
                current["scores"].append(score)
            else:
                current = {"entity": kind, "start": start, "end": end, "scores": [score]}
                found.append(current)
        entities.append([{"entity": e["entity"], "score": float(np.mean(e["scores"])), "start": e["start"],
                          "end": e["end"], "word": text[e["start"]:e["end"]]} for e in found])
    return {"TOKEN_LABEL_IDS": token_ids,
            "ENTITIES": np.array([[json.dumps(e).encode()] for e in entities], dtype=object).reshape(-1, 1)}


def answer_spans(start_logits: np.ndarray, end_logits: np.ndarray, sequence_ids: np.ndarray, offsets: np.ndarray,
                 contexts: list[str], max_answer_tokens: int = MAX_ANSWER_TOKENS) -> dict[str, np.ndarray]:
    """Question answering: the best span of context tokens (start <= end < start + max_answer_tokens),
    maximising start_logit + end_logit. ``ANSWER`` (BYTES [B, 1]), ``ANSWER_START``/``ANSWER_END``
    (int32 [B, 1], character offsets into the context), ``START_TOKEN``/``END_TOKEN`` (int32 [B, 1])
    and ``SCORE`` (float32 [B, 1]: p_start * p_end, softmax over the context tokens)."""
    batch = start_logits.shape[0]
    out = {name: np.zeros((batch, 1), dtype=np.int32)
           for name in ("ANSWER_START", "ANSWER_END", "START_TOKEN", "END_TOKEN")}
    out["SCORE"] = np.zeros((batch, 1), dtype=np.float32)
    answers = []
    for row in range(batch):
        context = np.flatnonzero(sequence_ids[row] == 1)
        if context.size == 0:
            raise TextError(f"TEXT_PAIR {row} has no tokens left as context")
        p_start = softmax(np.asarray(start_logits[row], np.float64)[context])
        p_end = softmax(np.asarray(end_logits[row], np.float64)[context])
        scores = np.log(p_start)[:, None] + np.log(p_end)[None, :]
        i, j = np.indices(scores.shape)
        scores[(j < i) | (j - i >= max_answer_tokens)] = -np.inf
        s, e = np.unravel_index(int(np.argmax(scores)), scores.shape)
        start_token, end_token = int(context[s]), int(context[e])
        char_start, char_end = int(offsets[row, start_token, 0]), int(offsets[row, end_token, 1])
        answers.append(contexts[row][char_start:char_end].encode())
        out["ANSWER_START"][row, 0], out["ANSWER_END"][row, 0] = char_start, char_end
        out["START_TOKEN"][row, 0], out["END_TOKEN"][row, 0] = start_token, end_token
        out["SCORE"][row, 0] = p_start[s] * p_end[e]
    out["ANSWER"] = np.array(answers, dtype=object).reshape(-1, 1)
    return out


def postprocess(task: str, outputs: dict[str, np.ndarray], tokens: dict[str, np.ndarray], texts: list[str],
                pairs: list[str] | None, labels: list[str]) -> dict[str, np.ndarray]:
    """The task's answer from the model's outputs and the tokenizer's ``OFFSETS``/``SEQUENCE_IDS``."""
    if task == "sequence-classification":
        return classify(outputs["logits"], labels)
    if task == "token-classification":
        return token_entities(outputs["logits"], tokens["SEQUENCE_IDS"], tokens["OFFSETS"], texts, labels,
                              tokens.get("attention_mask"))
    if task == "question-answering":
        if pairs is None:
            raise TextError("question answering needs TEXT_PAIR (the context)")
        return answer_spans(outputs["start_logits"], outputs["end_logits"], tokens["SEQUENCE_IDS"],
                            tokens["OFFSETS"], pairs)
    raise TextError(f"no post-processing for task {task!r}")


# ---- helpers for the Python-backend models (run only inside Triton) ------------------------

def model_parameters(args: dict) -> dict[str, str]:
    """The ``parameters`` of a Python-backend model's config.pbtxt, as strings."""
    config = json.loads(args["model_config"])
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def error_response(exc: BaseException):
    """An InferenceResponse carrying ``exc``: INVALID_ARG (HTTP 400) for a refused request,
    INTERNAL (500) for anything else."""
    import triton_python_backend_utils as pb_utils

    code = pb_utils.TritonError.INVALID_ARG if isinstance(exc, TextError) else pb_utils.TritonError.INTERNAL
    message = str(exc) if isinstance(exc, TextError) else f"{type(exc).__name__}: {exc}"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def answer_each(requests, answer) -> list:
    """One response per request: ``answer(request)`` -> output arrays, or the error it raised
    (one bad request must not fail the others)."""
    responses = []
    for request in requests:
        try:
            responses.append(respond(answer(request)))
        except Exception as exc:
            responses.append(error_response(exc))
    return responses


def respond(arrays: dict[str, np.ndarray]):
    import triton_python_backend_utils as pb_utils

    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, value) for name, value in arrays.items()])


def request_texts(request) -> tuple[list[str], list[str] | None]:
    """TEXT and TEXT_PAIR (or None) of a request; a request without TEXT is refused."""
    text = optional_input(request, "TEXT")
    if text is None:
        raise TextError("input TEXT is missing: send the text(s) as TEXT, BYTES of shape [batch, 1]")
    pair = optional_input(request, "TEXT_PAIR")
    return decode_texts(text, "TEXT"), None if pair is None else decode_texts(pair, "TEXT_PAIR")


def optional_input(request, name: str):
    import triton_python_backend_utils as pb_utils

    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
