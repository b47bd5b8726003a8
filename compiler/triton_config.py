"""config.pbtxt of each model of the served pipeline, as protobuf text.

    <name>               ensemble: TEXT (+ TEXT_PAIR) -> the task's answer
    <name>-tokenizer     Python backend: the checkpoint's fast tokenizer -> the model's inputs
    <name>-model         platform tensorrt_plan (the engine) or Python backend running the ONNX with ONNX Runtime
    <name>-postprocess   Python backend: outputs -> labels and scores / entities / answer spans

Triton's convention: with ``max_batch_size > 0`` the batch dimension is implicit, so
``dims`` leave it out (``input_ids`` [batch, sequence] is ``dims: [ -1 ]``). Every step
batches up to the model's ``max_batch_size`` (from the engine's profiles, or chosen for the
ONNX variant); the model step has dynamic batching, which merges requests of equal shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from debertrt.core.errors import DebertrtError

TRITON_DTYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int8": "TYPE_INT8",
    "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "bytes": "TYPE_STRING",
}
DEFAULT_QUEUE_DELAY_US = 100
ENV_PARAMETER = "EXECUTION_ENV_PATH"
STEPS = ("tokenizer", "model", "postprocess")
TEXT_INPUTS = ("TEXT", "TEXT_PAIR")
TOKEN_OUTPUTS = {"OFFSETS": ("int32", [-1, 2]), "SEQUENCE_IDS": ("int32", [-1])}


class Enum(str):
    """A protobuf enum value: written without quotes."""


def render(fields: dict, indent: int = 0) -> str:
    """Protobuf text format for nested dicts (messages), lists (repeated fields) and scalars."""
    pad = "  " * indent
    lines = []
    for key, value in fields.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", render(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                lines += [f"{pad}  {{", render(item, indent + 2), f"{pad}  }}" + ("," if i < len(value) - 1 else "")]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


@dataclass(frozen=True)
class Tensor:
    """One input or output: its name, NumPy-style dtype and shape with the batch dimension first."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def from_dict(cls, data: dict, kind: str) -> "Tensor":
        shape = tuple(data["shape"])
        if not shape or shape[0] != -1:
            raise DebertrtError(f"{kind} {data['name']} has shape {list(shape)}: Triton batching needs a dynamic "
                                f"first (batch) dimension; export with dynamic axes")
        if data["dtype"] not in TRITON_DTYPES:
            raise DebertrtError(f"{kind} {data['name']}: dtype {data['dtype']} has no Triton type")
        return cls(data["name"], data["dtype"], shape)

    def entry(self, optional: bool = False) -> dict:
        entry = {"name": self.name, "data_type": Enum(TRITON_DTYPES[self.dtype]), "dims": list(self.shape[1:])}
        if optional:
            entry["optional"] = True
        return entry


def text_tensors() -> list[dict]:
    """The ensemble's (and the tokenizer's) text inputs. Both are optional in the configs and the
    tokenizer step refuses a request without TEXT (or without TEXT_PAIR where the task needs it)
    with a message that says so: Triton's ensemble scheduler answers a missing required input
    that is not the only one with "unexpected deadlock" instead."""
    return [Tensor(name, "bytes", (-1, 1)).entry(optional=True) for name in TEXT_INPUTS]


def task_output_tensors(task: str, num_labels: int) -> list[Tensor]:
    from debertrt.runtime.serving.text import TASK_OUTPUTS

    return [Tensor(name, dtype, (-1,) + tuple(num_labels if d == "labels" else d for d in dims))
            for name, (dtype, dims) in TASK_OUTPUTS[task].items()]


def _parameters(values: dict[str, object]) -> list[dict]:
    return [{"key": key, "value": {"string_value": str(value)}} for key, value in values.items() if value is not None]


def _text(comment: str, name: str, max_batch: int, fields: dict) -> str:
    return f"# {comment}\n" + render({"name": name, "max_batch_size": int(max_batch), **fields}) + "\n"


def _dynamic_batching(max_queue_delay_us: int, preferred: list[int] | None = None) -> dict:
    batching = {"preferred_batch_size": preferred} if preferred else {}
    batching["max_queue_delay_microseconds"] = int(max_queue_delay_us)
    return batching


def _cpu_instances(count: int) -> list[dict]:
    return [{"count": int(count), "kind": Enum("KIND_CPU")}]


def plan_config(engine: dict, name: str, instances: int = 1, max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> str:
    """The engine model step (platform ``tensorrt_plan``), from engine.json."""
    profiles = engine["profiles"]
    if not any(p["batch"][0] == 1 for p in profiles):
        raise DebertrtError("Triton sends batches from 1 up to max_batch_size, but no engine profile starts at "
                            "batch 1: rebuild with --profile batch=1:...")
    inputs = [Tensor.from_dict(t, "input") for t in engine["inputs"]]
    outputs = [Tensor.from_dict(t, "output") for t in engine["outputs"]]
    opt = sorted({p["batch"][1] for p in profiles if p["batch"][1] > 1})
    instance = {"count": int(instances), "kind": Enum("KIND_GPU")}
    if len(profiles) > 1:
        instance["profile"] = [str(i) for i in range(len(profiles))]
    comment = (f"Written by debertrt export-triton from {engine['plan']['path']} "
               f"({engine['tensorrt']['flavour']} {engine['tensorrt']['version']}, {engine['precision']}).")
    return _text(comment, name, max(p["batch"][2] for p in profiles), {
        "platform": "tensorrt_plan", "input": [t.entry() for t in inputs], "output": [t.entry() for t in outputs],
        "dynamic_batching": _dynamic_batching(max_queue_delay_us, opt), "instance_group": [instance]})


def onnx_model_config(name: str, onnx_file: str, inputs: list[Tensor], outputs: list[Tensor], max_batch: int,
                      max_length: int, env: str | None, instances: int = 1,
                      max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> str:
    """The model step as a Python-backend model running the ONNX with ONNX Runtime on the CPU."""
    comment = f"Written by debertrt export-triton: {onnx_file} run by ONNX Runtime (CPU) in the Python backend."
    return _text(comment, name, max_batch, {
        "backend": "python", "input": [t.entry() for t in inputs], "output": [t.entry() for t in outputs],
        "dynamic_batching": _dynamic_batching(max_queue_delay_us), "instance_group": _cpu_instances(instances),
        "parameters": _parameters({"onnx": onnx_file, "max_length": max_length, ENV_PARAMETER: env})})


def tokenizer_config(name: str, model_inputs: list[Tensor], max_batch: int, max_length: int, pad_id: int,
                     pad_to_multiple_of: int, needs_pair: bool, env: str | None, min_length: int = 1) -> str:
    outputs = [t.entry() for t in model_inputs]
    outputs += [Tensor(n, dtype, (-1,) + tuple(dims)).entry() for n, (dtype, dims) in TOKEN_OUTPUTS.items()]
    comment = "Written by debertrt export-triton: the checkpoint's fast tokenizer (tokenizer/ beside model.py)."
    return _text(comment, name, max_batch, {
        "backend": "python", "input": text_tensors(), "output": outputs,
        "dynamic_batching": _dynamic_batching(0), "instance_group": _cpu_instances(1),
        "parameters": _parameters({
            "input_names": ",".join(t.name for t in model_inputs), "input_dtypes": ",".join(t.dtype for t in model_inputs),
            "max_length": max_length, "min_length": min_length, "pad_id": pad_id,
            "pad_to_multiple_of": pad_to_multiple_of,
            "needs_pair": str(needs_pair).lower(), ENV_PARAMETER: env})})


def postprocess_config(name: str, task: str, model_inputs: list[Tensor], model_outputs: list[Tensor],
                       labels: list[str], max_batch: int, env: str | None) -> str:
    inputs = [t.entry() for t in model_outputs] + [t.entry() for t in model_inputs if t.name == "attention_mask"]
    inputs += [Tensor(n, dtype, (-1,) + tuple(dims)).entry() for n, (dtype, dims) in TOKEN_OUTPUTS.items()]
    inputs += text_tensors()
    return _text(f"Written by debertrt export-triton: {task} post-processing.", name, max_batch, {
        "backend": "python", "input": inputs, "output": [t.entry() for t in task_output_tensors(task, len(labels))],
        "dynamic_batching": _dynamic_batching(0), "instance_group": _cpu_instances(1),
        "parameters": _parameters({"task": task, "labels": json.dumps(labels, ensure_ascii=False),
                                   "model_outputs": ",".join(t.name for t in model_outputs), ENV_PARAMETER: env})})


def ensemble_config(name: str, task: str, model_inputs: list[Tensor], model_outputs: list[Tensor], num_labels: int,
                    max_batch: int) -> str:
    """TEXT (+ TEXT_PAIR) -> tokenizer -> model -> postprocess -> the task's answer."""
    def step(suffix: str, inputs: list[str], outputs: list[str]) -> dict:
        return {"model_name": f"{name}-{suffix}", "model_version": -1,
                "input_map": [{"key": n, "value": n} for n in inputs],
                "output_map": [{"key": n, "value": n} for n in outputs]}

    token_names = [t.name for t in model_inputs] + list(TOKEN_OUTPUTS)
    answers = task_output_tensors(task, num_labels)
    return _text(f"Written by debertrt export-triton: text in, {task} answers out.", name, max_batch, {
        "platform": "ensemble", "input": text_tensors(), "output": [t.entry() for t in answers],
        "ensemble_scheduling": {"step": [
            step("tokenizer", list(TEXT_INPUTS), token_names),
            step("model", [t.name for t in model_inputs], [t.name for t in model_outputs]),
            step("postprocess", [t.name for t in model_outputs] + ["attention_mask"] + list(TOKEN_OUTPUTS)
                 + list(TEXT_INPUTS), [t.name for t in answers]),
        ]}})
