"""A real Triton Inference Server (nvidia-pytriton's tritonserver, Python backend) serving the
repositories export-triton writes, with the ONNX Runtime model step, on loopback ports.

One server for the module serves three pipelines: the trained classifier, a token classifier
whose model step is a plugin graph (DisentangledAttention through the NumPy reference) and a
question-answering model with token_type_ids. Answers over HTTP and gRPC must equal the
direct ONNX Runtime run of the same artifact (what ``debertrt parity`` runs). The TensorRT-plan
variant is config-checked in test_triton.py.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from debertrt.core.errors import DebertrtError
from debertrt.compiler.export import ExportOptions, export
from debertrt.core.models import load_model
from debertrt.compiler.rewrite import rewrite
from debertrt.compiler.triton import TritonOptions, export_triton, text_assets
from debertrt.compiler.bench_serve import (Case, Client, batch_statistics, batching, compare_answer, direct_answers,
                                            run_load, scrape_metrics, served_answers)
from debertrt.runtime.serving.server import TritonServer, free_port

# its module/session fixtures are costly: one xdist worker runs the whole file
pytestmark = pytest.mark.xdist_group("test_serving")

for module, reason in (("pytriton", "nvidia-pytriton (tritonserver) is not installed: pip install 'debertrt[serve]'"),
                       ("tritonclient", "tritonclient is not installed: pip install 'debertrt[serve]'")):
    if importlib.util.find_spec(module) is None:
        pytest.skip(reason, allow_module_level=True)

MAX_BATCH = 8
CLS_MAX_LENGTH = 64
WORDS = "the cat sat on mat a dog ran in park bird sang song fish swim sea sun is hot today rain fell town".split()
NER_LABELS = {0: "O", 1: "B-ITEM", 2: "I-ITEM"}


def digit_texts(count, seed, words=(6, 24)):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice([f"d{i}" for i in range(10)], size=int(n) - 1).tolist()[:2] + ["b"] +
                     rng.choice([f"d{i}" for i in range(10)], size=int(n) - 3).tolist())
            for n in rng.integers(words[0], words[1] + 1, size=count)]


def word_texts(count, seed, words=(3, 40)):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(n)).tolist()) for n in rng.integers(words[0], words[1] + 1, size=count)]


class Pipeline:
    def __init__(self, name, task, onnx_path, model, cases, options=None):
        self.name, self.task, self.onnx, self.cases = name, task, onnx_path, cases
        self.options = TritonOptions(name=name, model=model, max_batch_size=MAX_BATCH, **(options or {}))
        self.assets = text_assets(model, task, None)
        self.expected = direct_answers(onnx_path, self.assets.tokenizer, task, self.assets.labels, cases)

    def export(self, repo):
        export_triton(repo, onnx=self.onnx, options=self.options)


@pytest.fixture(scope="module")
def pipelines(exported, text_checkpoint, tmp_path_factory):
    cls = Pipeline("cls", "sequence-classification", exported("tiny-deberta-v3-trained", "sequence-classification",
                                                              "torchscript"), "tiny-deberta-v3-trained",
                   [Case(t) for t in digit_texts(10, 1) + digit_texts(2, 2, (40, 60))],
                   {"max_length": CLS_MAX_LENGTH})
    ner_ckpt = text_checkpoint("tiny-deberta-v2", "token-classification", num_labels=3, id2label=NER_LABELS,
                               label2id={v: k for k, v in NER_LABELS.items()})
    out = tmp_path_factory.mktemp("ner")
    ner_onnx = rewrite(export(load_model(str(ner_ckpt), "token-classification"), out,
                              ExportOptions(exporter="torchscript"))).path  # a plugin graph
    ner = Pipeline("ner", "token-classification", ner_onnx, str(ner_ckpt),
                   [Case(t) for t in word_texts(8, 3)])
    qa_ckpt = text_checkpoint("tiny-deberta-v2", "question-answering", num_labels=2)
    qa_onnx = export(load_model(str(qa_ckpt), "question-answering"), tmp_path_factory.mktemp("qa"),
                     ExportOptions(exporter="torchscript"))
    qa = Pipeline("qa", "question-answering", qa_onnx, str(qa_ckpt),
                  [Case(q, c) for q, c in zip(word_texts(6, 4, (2, 6)), word_texts(6, 5, (5, 40)))])
    return {p.name: p for p in (cls, ner, qa)}


@pytest.fixture(scope="module")
def server(pipelines, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for pipeline in pipelines.values():
        pipeline.export(repo)
    log = tmp_path_factory.mktemp("log") / "tritonserver.log"
    with TritonServer(repo, log_file=log) as running:
        yield running


def _url(server, protocol):
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_answers_equal_the_direct_run(server, pipelines, protocol):
    client = Client(_url(server, protocol), protocol)
    try:
        for p in pipelines.values():
            pairs = [c.pair for c in p.cases] if p.task == "question-answering" else None
            for i, case in enumerate(p.cases):
                got = served_answers(p.task, client.infer(p.name, [case.text], pairs and [case.pair]))[0]
                assert compare_answer(p.task, got, p.expected[i]) is None, (p.name, i)
            # one request of several texts (padded together) gives the same answers
            texts = [c.text for c in p.cases[:MAX_BATCH]]
            batched = served_answers(p.task, client.infer(p.name, texts, pairs and pairs[:MAX_BATCH]))
            assert [compare_answer(p.task, g, w) for g, w in zip(batched, p.expected)] == [None] * len(texts)
    finally:
        client.close()
    if protocol == "grpc":
        return
    entities = served_answers("token-classification", Client(server.http_url).infer("ner", [pipelines["ner"].cases[0].text]))
    text = pipelines["ner"].cases[0].text
    for entity in entities[0]["entities"]:
        assert entity["word"] == text[entity["start"]:entity["end"]] and entity["entity"] == "ITEM"
    qa = pipelines["qa"].cases[0]
    span = Client(server.http_url).infer("qa", [qa.text], [qa.pair])
    assert span["ANSWER"][0, 0].decode() == qa.pair[span["ANSWER_START"][0, 0]:span["ANSWER_END"][0, 0]]


def _refused(client, protocol, model, inputs):
    """Send raw inputs [(name, array, datatype)]; return the error's (status, message)."""
    from tritonclient.utils import InferenceServerException

    tensors = []
    for name, array, datatype in inputs:
        tensor = client.module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with pytest.raises(InferenceServerException) as caught:
        client.client.infer(model, tensors)
    return str(caught.value.status()), caught.value.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_are_refused_and_the_server_keeps_serving(server, pipelines, protocol):
    bad = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    client = Client(_url(server, protocol), protocol)
    cls, qa = pipelines["cls"], pipelines["qa"]

    def text(value):
        return np.array([[value.encode()]], dtype=object)

    long_text = " ".join(["d1"] * CLS_MAX_LENGTH)  # + [CLS] [SEP]: two tokens over the limit
    cases = [
        ("cls", [("TEXT", text("   "), "BYTES")], "TEXT 0 is empty"),
        ("cls", [("TEXT", text(long_text), "BYTES")], f"{CLS_MAX_LENGTH + 2} tokens long but the model takes at most "
                                                      f"{CLS_MAX_LENGTH}: shorten or split it (nothing is truncated)"),
        ("cls", [("TEXT", np.array([[1]], np.int32), "INT32")], "data-type is 'INT32', but model 'cls' expects 'BYTES'"),
        ("cls", [("TEXT", np.array([[b"d1 b", b"d2 b"]], dtype=object), "BYTES")], "unexpected shape for input 'TEXT'"),
        ("cls", [("TEXT_PAIR", text("d1 b d2"), "BYTES")], "input TEXT is missing: send the text(s) as TEXT"),
        ("cls", [], "request has 0 inputs"),  # Triton's own words: it needs one input to know the batch size
        ("cls", [("TEXT", np.array([[b"d1 b d2"]] * (MAX_BATCH + 1), dtype=object), "BYTES")],
         f"batch-size must be <= {MAX_BATCH}"),
        ("qa", [("TEXT", text("the cat"), "BYTES")], "send TEXT (question) and TEXT_PAIR (context)"),
        ("cls", [("TEXT", np.array([[b"d1 b \xff"]], dtype=object), "BYTES")], "TEXT 0 is not UTF-8"),
    ]
    try:
        for model, inputs, message in cases:
            status, got = _refused(client, protocol, model, inputs)
            assert status == bad and message in got, (status, got)
            answer = served_answers("sequence-classification", client.infer("cls", [cls.cases[0].text]))[0]
            assert compare_answer(cls.task, answer, cls.expected[0]) is None
        span = served_answers(qa.task, client.infer("qa", [qa.cases[1].text], [qa.cases[1].pair]))[0]
        assert compare_answer(qa.task, span, qa.expected[1]) is None
    finally:
        client.close()


def test_concurrent_requests_are_batched_and_counted(server, pipelines):
    cls = pipelines["cls"]
    before, sizes_before = scrape_metrics(server.metrics_url), batch_statistics(server.http_url, "cls-model")
    result = run_load(server.http_url, "cls", cls.task, cls.cases, cls.expected, clients=8, requests=96)
    summary = result.summary()
    assert (summary["errors"], summary["wrong"], summary["answered"]) == (0, 0, 96), summary
    formed = batching(before, scrape_metrics(server.metrics_url), "cls-model")
    assert formed["inferences"] == 96  # every text reached the model step once
    assert 0 < formed["executions"] < 96  # ... in fewer runs: the dynamic batcher merged requests
    sizes = batch_statistics(server.http_url, "cls-model")
    new = {size: count - sizes_before.get(size, 0) for size, count in sizes.items()}
    assert sum(size * count for size, count in new.items()) == 96 and max(s for s, c in new.items() if c) > 1


def _serve(repo, ports, log):
    """``debertrt serve`` in a child process; returns it once it printed its URLs."""
    command = [sys.executable, "-m", "debertrt.compiler.cli", "serve", str(repo), "--http-port", str(ports[0]),
               "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    line = process.stdout.readline()  # the server's own log goes to stderr; stdout has our one line
    assert line.startswith(f"serving {repo}: HTTP http://127.0.0.1:{ports[0]}"), line
    return process


def _children(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.is_file() else []


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"  # a zombie has ended
    except (OSError, IndexError):
        return False


def test_serve_command_survives_a_killed_server(pipelines, tmp_path):
    """Kill tritonserver mid-load: clients get errors, never a wrong answer; `debertrt serve` reports
    the crash; served again, the same repository answers correctly."""
    cls = pipelines["cls"]
    repo = tmp_path / "repo"
    cls.export(repo)
    ports = [free_port() for _ in range(3)]
    log = open(tmp_path / "serve.log", "w")
    process = _serve(repo, ports, log)
    try:
        url = f"127.0.0.1:{ports[0]}"
        results = {}
        loader = threading.Thread(target=lambda: results.setdefault("load", run_load(
            url, "cls", cls.task, cls.cases, cls.expected, clients=4, requests=4000, deadline_s=60)))
        loader.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # mid-load: once the server has answered some requests
            if scrape_metrics(f"http://127.0.0.1:{ports[2]}/metrics").get(("nv_inference_count", "cls"), 0) >= 40:
                break
            time.sleep(0.2)
        (server_pid,) = _children(process.pid)
        stubs = _children(server_pid)  # bash -c 'exec ... stub' leaves the stub as the server's child
        assert len(stubs) == 3
        os.kill(server_pid, signal.SIGKILL)
        loader.join(90)
        load = results["load"].summary()
        assert load["wrong"] == 0 and load["answered"] >= 40 and load["errors"] > 0, load
        assert process.wait(30) == 1
        assert "tritonserver exited with code -9" in (tmp_path / "serve.log").read_text()
        assert not [pid for pid in stubs if _alive(pid)]  # the crashed server's stubs were ended

        process = _serve(repo, ports, log)
        again = run_load(url, "cls", cls.task, cls.cases, cls.expected, clients=2, requests=24).summary()
        assert (again["errors"], again["wrong"], again["answered"]) == (0, 0, 24), again
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(60) == 130
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_a_model_that_cannot_load_stops_the_start_with_the_reason(pipelines, tmp_path):
    repo = tmp_path / "repo"
    pipelines["cls"].export(repo)
    (repo / "cls-model" / "1" / pipelines["cls"].onnx.name).write_bytes(b"not an onnx file")
    server = TritonServer(repo, log_file=tmp_path / "tritonserver.log")
    with pytest.raises(DebertrtError, match=r"tritonserver exited with code \d+ before it was ready: .*cls-model"):
        server.start()
    assert not server.running
