"""README.md of a model repository written by ``debertrt export-triton``."""

from __future__ import annotations

from pathlib import Path


def render_readme(name: str, source, task: str | None, models: dict, library: str | None, model_only: bool,
                  env: str | None) -> str:
    from debertrt.runtime.serving.text import TASK_OUTPUTS

    engine = source.engine
    lines = [f"# Triton model repository: `{name}`", "",
             f"Written by `debertrt export-triton` from `{source.path.name}` (model `{source.model}`, {task})."]
    if not model_only:
        lines += ["", "| model | what it does |", "|---|---|",
                  f"| `{name}` | ensemble: `TEXT` (+ `TEXT_PAIR`) in, the answer out |",
                  f"| `{name}-tokenizer` | Python backend: the checkpoint's fast tokenizer (`1/tokenizer/`) |",
                  f"| `{name}-model` | {_runtime(source)} |",
                  f"| `{name}-postprocess` | Python backend: {task} post-processing |"]
    lines += ["", f"Batches of up to {source.max_batch} texts; at most {source.max_length} tokens per text. A longer "
              "text is refused with HTTP 400 / gRPC INVALID_ARGUMENT (nothing is truncated), and so is an empty one.",
              "Texts are padded to a multiple of the tokenizer step's `pad_to_multiple_of` tokens so that the "
              "model step's dynamic batcher, which merges only requests of equal shape, finds more of them.", ""]
    lines += ["Model inputs: " + ", ".join(f"`{t.name}` {t.dtype}" for t in source.inputs) + ".",
              "Model outputs: " + ", ".join(f"`{t.name}` {t.dtype} {list(t.shape)}" for t in source.outputs) + "."]
    if not model_only:
        lines += ["", "Answers: " + ", ".join(f"`{n}` ({dtype})" for n, (dtype, _) in TASK_OUTPUTS[task].items())
                  + "."]
    lines += ["", "## Start the server", "", "```sh", f"debertrt serve {'$PWD'}", "```", "",
              "starts a local `tritonserver` (from `pip install 'debertrt[serve]'`) on loopback ports and prints "
              "their URLs. With your own Triton (same repository):", "", "```sh",
              "tritonserver --model-repository=$PWD" + (f' --backend-config=tensorrt,plugins="$PWD/{name}'
                                                         f'{"" if model_only else "-model"}/{library}"' if library else ""),
              "```", ""]
    if env:
        lines += [f"The Python-backend models run in the environment named by their `EXECUTION_ENV_PATH` "
                  f"parameter (`{env}`): a directory (a virtualenv whose packages are the Python's that ran "
                  "`debertrt export-triton`) or a `conda-pack` archive. On another server, export with "
                  "`--python-env PATH` (a path on that server; `$$TRITON_MODEL_DIRECTORY` is allowed) or "
                  "`--python-env none` and install the packages into the server's Python.", ""]
    else:
        lines += ["The Python-backend models use the server's own Python: it needs numpy and tokenizers (and, for "
                  "the ONNX Runtime model step, debertrt with onnxruntime).", ""]
    if engine is not None:
        trt = engine["tensorrt"]
        lines += [f"The engine was built with {trt['flavour']} {trt['version']} ({engine['precision']}) and runs only "
                  "on that TensorRT version, on a GPU it was built for: use a Triton release whose TensorRT is "
                  f"{trt['version']} (see Triton's framework support matrix)."]
        if trt["flavour"] == "tensorrt-rtx":
            lines += ["Triton's `tensorrt_plan` platform deserializes with TensorRT; a TensorRT-RTX engine needs the "
                      "TensorRT-RTX runtime. Rebuild with `--backend tensorrt` for Triton's TensorRT backend, or "
                      "serve the ONNX artifact (`debertrt export-triton --onnx`)."]
        lines += ["Profiles (min:opt:max): " + "; ".join(
            f"batch {':'.join(map(str, p['batch']))}, sequence {':'.join(map(str, p['sequence']))}"
            for p in engine["profiles"]), ""]
    if library:
        plugins = ", ".join(f"`{p['name']}` (namespace `{p['namespace']}`, version {p['version']})"
                            for p in engine["plugins"])
        lines += [f"The engine contains the plugins {plugins}. `{library}` (in the model step's directory) "
                  "registers their creators when "
                  "loaded; Triton must load it before it deserializes the engine: pass it with "
                  "`--backend-config=tensorrt,plugins=...` as above, or with `LD_PRELOAD=$PWD/.../"
                  f"{library}:$LD_PRELOAD`. Use absolute paths; it must be built against Triton's TensorRT major "
                  "version.", ""]
    lines += ["## Query it", "", "```sh"]
    if model_only:
        lines.append(f"curl localhost:8000/v2/models/{name}/config")
    else:
        pair = ', {"name": "TEXT_PAIR", "shape": [1, 1], "datatype": "BYTES", "data": ["..."]}' if task == \
            "question-answering" else ""
        lines.append(f"curl -s localhost:8000/v2/models/{name}/infer -d '{{\"inputs\": [{{\"name\": \"TEXT\", "
                     f"\"shape\": [1, 1], \"datatype\": \"BYTES\", \"data\": [\"...\"]}}{pair}]}}'")
    lines += ["```", "", "Files: " + ", ".join(f"`{m}/`" for m in models) + "."]
    return "\n".join(lines) + "\n"


def _runtime(source) -> str:
    if source.kind == "engine":
        return f"TensorRT plan (`tensorrt_plan`): `1/model.plan` from `{Path(source.path).name}`"
    return f"ONNX Runtime (CPU) in the Python backend: `1/{Path(source.path).name}`"
