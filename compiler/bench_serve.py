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

import dataclasses
import json
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np

from debertrt.runtime.serving.text import answer_spans, softmax

SCORE_ATOL = 1e-4


@dataclass(frozen=True)
class Case:
    text: str
    pair: str | None = None


# ---- the direct run ---------------------------------------------------------------------

def direct_answers(onnx_path, tokenizer, task: str, labels: list[str], cases: list[Case]) -> list[dict]:
    """Answers of ONNX Runtime on ``onnx_path`` for each case, one text per run."""
    from debertrt.core.compare import predictions
    from debertrt.runtime.runners import OnnxRuntimeRunner

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


# ---- the benchmark (scripts/bench_serve.py) -----------------------------------------------

def digit_sentences(count: int, seed: int, words: tuple[int, int] = (6, 24)) -> list[str]:
    """Sentences of the trained preset's task (digit words with one marker ``b``), of ``words`` words."""
    rng = np.random.default_rng(seed)
    texts = []
    for n in rng.integers(words[0], words[1] + 1, size=count):
        digits = [f"d{v}" for v in rng.integers(0, 10, size=int(n))]
        digits[int(rng.integers(0, int(n)))] = "b"
        texts.append(" ".join(digits))
    return texts


def machine() -> dict:
    """CPU model, the flags that decide ONNX Runtime's kernels, cores."""
    import os
    import platform

    info = {"cpu": platform.processor() or "unknown", "flags": [], "cores": os.cpu_count()}
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return info
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    if model:
        info["cpu"] = model.group(1).strip()
    if flags:
        wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
        present = set(flags.group(1).split())
        info["flags"] = [f for f in wanted if f in present]
    return info


def benchmark(onnx_path, model: str, work_dir, clients: tuple[int, ...] = (1, 4, 16), requests: int = 3000,
              protocol: str = "http", long_fraction: float = 0.3, seed: int = 0, max_queue_delay_us: int | None = None,
              log=print) -> dict:
    """Export the text pipeline for ``onnx_path`` (ONNX Runtime model step), serve it, and load it
    with each number of clients in turn (``requests`` in all); every answer checked."""
    from pathlib import Path

    from debertrt.core.artifacts import manifest_model, versions
    from debertrt.compiler.triton import TritonOptions, export_triton, text_assets

    from .server import TritonServer

    work_dir = Path(work_dir)
    task = manifest_model(onnx_path)[1] or "sequence-classification"
    name = "bench"
    options = TritonOptions(name=name, model=model)
    if max_queue_delay_us is not None:
        options = dataclasses.replace(options, max_queue_delay_us=max_queue_delay_us)
    export_triton(work_dir / "repo", onnx=onnx_path, options=options)
    assets = text_assets(model, task, None)
    short = digit_sentences(200, seed)
    long = digit_sentences(int(200 * long_fraction / (1 - long_fraction)), seed + 1, (25, 250))
    cases = [Case(t) for t in short + long]
    np.random.default_rng(seed).shuffle(cases)
    log(f"direct ONNX Runtime run of {len(cases)} texts ({len(short)} of 6-24 words, {len(long)} of 25-250)")
    expected = direct_answers(onnx_path, assets.tokenizer, task, assets.labels, cases)
    result = {"artifact": str(onnx_path), "model": model, "task": task, "protocol": protocol, "machine": machine(),
              "versions": versions("onnxruntime", "nvidia-pytriton", "tritonclient", "tokenizers", "numpy"),
              "cases": {"texts": len(cases), "short_words": [6, 24], "long_words": [25, 250]},
              "max_queue_delay_us": options.max_queue_delay_us, "date": time.strftime("%Y-%m-%d"), "levels": []}
    with TritonServer(work_dir / "repo", log_file=work_dir / "tritonserver.log") as server:
        url = server.http_url if protocol == "http" else server.grpc_url
        warm = run_load(url, name, task, cases, expected, clients=2, requests=len(cases), protocol=protocol)
        log(f"server up; warm-up: {warm.summary()['answered']} answers, {len(warm.errors)} errors, "
            f"{len(warm.wrong)} wrong")
        per_level = requests // len(clients)
        for count in clients:
            before, sizes_before = scrape_metrics(server.metrics_url), batch_statistics(server.http_url, f"{name}-model")
            load = run_load(url, name, task, cases, expected, clients=count, requests=per_level, protocol=protocol)
            sizes = batch_statistics(server.http_url, f"{name}-model")
            level = load.summary()
            level["model_step"] = batching(before, scrape_metrics(server.metrics_url), f"{name}-model")
            level["model_step"]["batch_sizes"] = {size: n - sizes_before.get(size, 0) for size, n in sorted(sizes.items())
                                                  if n - sizes_before.get(size, 0)}
            result["levels"].append(level)
            log(table({"levels": [level]}).splitlines()[-1])
    result["passed"] = all(level["errors"] == 0 and level["wrong"] == 0 for level in result["levels"])
    return result


def table(result: dict) -> str:
    lines = ["| clients | requests | errors | wrong | throughput (req/s) | p50 ms | p99 ms | model-step mean batch "
             "| model-step batch sizes (size: runs) |", "|---|---|---|---|---|---|---|---|---|"]
    for level in result["levels"]:
        step = level["model_step"]
        sizes = ", ".join(f"{size}: {n}" for size, n in step["batch_sizes"].items())
        lines.append(f"| {level['clients']} | {level['requests']} | {level['errors']} | {level['wrong']} | "
                     f"{level['throughput_rps']} | {level['p50_ms']} | {level['p99_ms']} | {step['mean_batch']} "
                     f"({step['inferences']} texts / {step['executions']} runs) | {sizes} |")
    return "\n".join(lines)
