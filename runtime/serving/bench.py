"""Served answers against the direct run, and a bounded load test of a served pipeline.

The direct run is what ``debertrt parity`` does with an ONNX artifact: the checkpoint's
tokenizer (transformers), ``OnnxRuntimeRunner`` on one text at a time (no padding), and the
task's prediction. A served answer is *equal* to it when the predicted classes / token
labels / span are identical and every score is within ``atol``.

``run_load`` sends a fixed number of requests from N client threads (each with its own
tritonclient client, HTTP or gRPC), checks every answer, and measures latency; the batch
sizes the server formed come from its metrics endpoint (``nv_inference_count`` /
``nv_inference_exec_count`` of the model step) and its statistics extension (executions per
batch size).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np

from .text import answer_spans, softmax

SCORE_ATOL = 1e-4


@dataclass(frozen=True)
class Case:
    text: str
    pair: str | None = None


# ---- the direct run ---------------------------------------------------------------------

def direct_answers(onnx_path, tokenizer, task: str, labels: list[str], cases: list[Case]) -> list[dict]:
    """Answers of ONNX Runtime on ``onnx_path`` for each case, one text per run."""
    from debertrt.compiler.compare import predictions
    from debertrt.compiler.runners import OnnxRuntimeRunner

    answers = []
    with OnnxRuntimeRunner(onnx_path) as runner:
        for case in cases:
            enc = tokenizer(case.text, case.pair, return_offsets_mapping=True, return_tensors="np")
            feed = {n: np.asarray(enc[n], np.int64) if n in enc else np.zeros(enc["input_ids"].shape, np.int64)
                    for n in runner.input_names}  # a tokenizer without token types: all zeros, as in parity
            outputs = runner.infer(feed)
            predicted = predictions(task, outputs)
            if task == "sequence-classification":
                answers.append({"label": labels[int(predicted["label"][0])], "scores": softmax(outputs["logits"])[0]})
            elif task == "token-classification":
                answers.append({"token_labels": predicted["label"][0].astype(np.int32),
                                "scores": softmax(outputs["logits"])[0].max(-1)})
            else:
                sequence_ids = np.array([[-1 if s is None else s for s in enc.sequence_ids(0)]], np.int32)
                span = answer_spans(outputs["start_logits"], outputs["end_logits"], sequence_ids,
                                    np.asarray(enc["offset_mapping"], np.int32), [case.pair])
                answers.append(_span_answer(span, 0))
    return answers


def _span_answer(span: dict, row: int) -> dict:
    return {"start_token": int(span["START_TOKEN"][row, 0]), "end_token": int(span["END_TOKEN"][row, 0]),
            "answer": _text(span["ANSWER"][row, 0]), "scores": np.float64(span["SCORE"][row, 0])}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---- served answers ---------------------------------------------------------------------

def served_answers(task: str, outputs: dict[str, np.ndarray]) -> list[dict]:
    """One answer per row of a response (``outputs``: name -> array); token labels are those of
    the text's own positions (padding is -1)."""
    if task == "sequence-classification":
        return [{"label": _text(label), "scores": scores}
                for label, scores in zip(outputs["LABEL"][:, 0], outputs["SCORES"])]
    if task == "token-classification":
        return [{"token_labels": row[row >= 0].astype(np.int32), "entities": json.loads(entities[0])}
                for row, entities in zip(outputs["TOKEN_LABEL_IDS"], outputs["ENTITIES"])]
    return [_span_answer(outputs, i) for i in range(len(outputs["ANSWER"]))]


def compare_answer(task: str, got: dict, want: dict, atol: float = SCORE_ATOL) -> str | None:
    """None when ``got`` equals ``want`` (same prediction, scores within ``atol``), else why not."""
    if task == "sequence-classification" and got["label"] != want["label"]:
        return f"label {got['label']} != {want['label']}"
    if task == "token-classification":
        if got["token_labels"].shape != want["token_labels"].shape or (got["token_labels"] != want["token_labels"]).any():
            return f"token labels {got['token_labels'].tolist()} != {want['token_labels'].tolist()}"
        return None  # entity scores are token scores, which the labels already pin down up to atol-level noise
    if task == "question-answering" and (got["start_token"], got["end_token"]) != (want["start_token"], want["end_token"]):
        return f"span {got['start_token']}..{got['end_token']} != {want['start_token']}..{want['end_token']}"
    diff = float(np.max(np.abs(np.asarray(got["scores"], np.float64) - np.asarray(want["scores"], np.float64))))
    return None if diff <= atol else f"scores differ by {diff:.3g} > {atol:g}"


class Client:
    """One tritonclient client (HTTP or gRPC) asking an ensemble for the answers to texts."""

    def __init__(self, url: str, protocol: str = "http", timeout: float = 60.0):
        if protocol == "http":
            import tritonclient.http as module

            self.client = module.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        elif protocol == "grpc":
            import tritonclient.grpc as module

            self.client = module.InferenceServerClient(url)
        else:
            raise ValueError(f"protocol {protocol!r}: http or grpc")
        self.module, self.protocol, self.timeout = module, protocol, timeout

    def infer(self, model: str, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        inputs = []
        for name, values in (("TEXT", texts), ("TEXT_PAIR", pairs)):
            if values is not None:
                array = np.array([[v.encode()] for v in values], dtype=object).reshape(-1, 1)
                tensor = self.module.InferInput(name, list(array.shape), "BYTES")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        result = self.client.infer(model, inputs, **kwargs)
        response = result.get_response()
        names = [o["name"] for o in response["outputs"]] if isinstance(response, dict) else \
            [o.name for o in response.outputs]
        return {name: result.as_numpy(name) for name in names}

    def close(self) -> None:
        self.client.close()


# ---- load -------------------------------------------------------------------------------

@dataclass
class LoadResult:
    clients: int
    requests: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        return {"clients": self.clients, "requests": self.requests, "answered": len(self.latencies_ms),
                "errors": len(self.errors), "wrong": len(self.wrong), "seconds": round(self.seconds, 3),
                "throughput_rps": round(len(self.latencies_ms) / self.seconds, 1) if self.seconds else None,
                "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "first_errors": self.errors[:3], "first_wrong": self.wrong[:3]}


def run_load(url: str, model: str, task: str, cases: list[Case], expected: list[dict], clients: int, requests: int,
             protocol: str = "http", atol: float = SCORE_ATOL, deadline_s: float = 600.0) -> LoadResult:
    """``requests`` single-text requests (case ``i % len(cases)``) from ``clients`` threads."""
    result = LoadResult(clients, requests, 0.0)
    counter = iter(range(requests))
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def worker():
        client = Client(url, protocol)
        try:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                case = cases[i % len(cases)]
                start = time.perf_counter()
                try:
                    outputs = client.infer(model, [case.text], None if case.pair is None else [case.pair])
                except Exception as exc:  # a refused connection, a server error: counted, never an answer
                    with lock:
                        result.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                    continue
                elapsed = (time.perf_counter() - start) * 1000
                problem = compare_answer(task, served_answers(task, outputs)[0], expected[i % len(cases)], atol)
                with lock:
                    result.latencies_ms.append(elapsed)
                    if problem:
                        result.wrong.append(f"case {i % len(cases)}: {problem}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker, name=f"client-{k}") for k in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - start
    return result


def scrape_metrics(metrics_url: str) -> dict[tuple[str, str], float]:
    """{(metric, model): value} of the ``nv_inference_*`` counters at the metrics endpoint."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    values = {}
    for match in re.finditer(r'^(nv_inference_\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$', text, re.MULTILINE):
        model = re.search(r'model="([^"]*)"', match.group(2))
        if model:
            key = (match.group(1), model.group(1))
            values[key] = values.get(key, 0.0) + float(match.group(3))
    return values


def batch_statistics(http_url: str, model: str) -> dict[int, int]:
    """{batch size: executions} from the statistics extension."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as response:
        stats = json.loads(response.read())
    sizes = {}
    for entry in stats["model_stats"]:
        for batch in entry.get("batch_stats", []):
            sizes[int(batch["batch_size"])] = sizes.get(int(batch["batch_size"]), 0) + int(batch["compute_infer"]["count"])
    return sizes


def batching(before: dict, after: dict, model: str) -> dict:
    """Inferences and executions of ``model`` between two scrapes; their ratio is the mean batch."""
    count = after.get(("nv_inference_count", model), 0) - before.get(("nv_inference_count", model), 0)
    executions = after.get(("nv_inference_exec_count", model), 0) - before.get(("nv_inference_exec_count", model), 0)
    return {"inferences": int(count), "executions": int(executions),
            "mean_batch": round(count / executions, 2) if executions else None}
