"""Stage 1: PyTorch reference -> ``model.onnx`` (fp32, dynamic batch, choices and sequence axes).

A model without an absolute position table exports with an unbounded sequence axis (the length
rule in ``core.models``) and is checked right after export at a length beyond
``max_position_embeddings`` too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from debertrt.core.artifacts import record_stage
from debertrt.core.errors import DebertrtError
from debertrt.core.models import ReferenceModel
from debertrt.core.resources import measured

EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18
VALIDATION_SHAPES = ((1, 1), (2, 7), (3, 65))  # (batch, sequence), checked right after export
VALIDATION_CHOICES = (1, 3, 2)                 # choices of each shape for multiple choice
BEYOND_TABLE = 88                               # a model of any length is also checked at max_position_embeddings + this
VALIDATION_ATOL = 1e-4
EXAMPLE_SHAPE = {"batch": 2, "choices": 3, "sequence": 16}  # dynamo specialises dimensions seen as 0 or 1
DIM_MAX = {"batch": 4096, "choices": 64}


@dataclass(frozen=True)
class ExportOptions:
    exporter: str = "dynamo"
    opset: int = DEFAULT_OPSET
    external_data: bool | None = None  # None: only when the weights exceed the protobuf limit
    validate: bool = True

    def __post_init__(self):
        if self.exporter not in EXPORTERS:
            raise DebertrtError(f"unknown exporter {self.exporter!r}: choose one of {', '.join(EXPORTERS)}")
        if not 14 <= self.opset <= 23:
            raise DebertrtError(f"opset {self.opset} is outside the supported range 14..23")


@measured
def export(ref: ReferenceModel, out_dir: str | os.PathLike, options: ExportOptions = ExportOptions()) -> Path:
    """Write ``out_dir/model.onnx`` (and ``model.onnx.data`` with external data) and its manifest."""
    import onnx

    from debertrt.core.onnx_utils import PROTOBUF_LIMIT, staged_save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "model.onnx"
    external = options.external_data
    if external is None:
        ref.torch_module()  # loaded: its fp32 parameters count, not a checkpoint's (maybe fp16) files
        external = ref.weight_bytes() > PROTOBUF_LIMIT // 2  # leave room for the graph itself
    with tempfile.TemporaryDirectory(prefix=".export.", dir=out_dir) as staging:
        raw = Path(staging) / "raw.onnx"
        _run_exporter(ref, raw, options)
        # the only reference is staged_save's: the weights are freed before the validation run
        with staged_save(onnx.load(raw, load_external_data=True), final, external) as staged:
            validation = validate_export(ref, staged) if options.validate else None

    outputs = {"model": final}
    if external:
        outputs["external_data"] = out_dir / (final.name + ".data")
    record_stage(out_dir, "export", inputs={"model": ref.name, "task": ref.task, "config_hash": ref.config_hash()},
                 options={"exporter": options.exporter, "opset": options.opset, "external_data": external},
                 outputs=outputs,
                 extra={"model_version": ref.version, "input_names": list(ref.input_names),
                        "input_axes": list(ref.input_axes), "output_names": list(ref.output_names),
                        "max_sequence": ref.max_sequence, "absolute_positions": ref.max_sequence is not None,
                        "config": ref.config.to_diff_dict(), "validation": validation})
    return final


def _example_inputs(ref: ReferenceModel):
    import torch

    gen = torch.Generator().manual_seed(0)
    shape = tuple(EXAMPLE_SHAPE[axis] for axis in ref.input_axes)
    example = [torch.randint(1, ref.config.vocab_size, shape, generator=gen), torch.ones(shape, dtype=torch.long)]
    if "token_type_ids" in ref.input_names:
        example.append(torch.zeros(shape, dtype=torch.long))
    return tuple(example)


def _output_axes(ref: ReferenceModel) -> dict[str, dict[int, str]]:
    """Dynamic axes of each output: per token outputs keep the input axes; one value per example
    ([batch, labels]) or per choice ([batch, choices]) keep those."""
    if ref.task == "sequence-classification":
        axes = ("batch",)
    elif ref.task == "multiple-choice":
        axes = ("batch", "choices")
    else:
        axes = ref.input_axes
    return {name: dict(enumerate(axes)) for name in ref.output_names}


def _run_exporter(ref: ReferenceModel, path: Path, options: ExportOptions) -> None:
    import torch

    module = ref.forward_module()
    example = _example_inputs(ref)
    names = list(ref.input_names)
    with warnings.catch_warnings(), torch.no_grad(), _quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        if options.exporter == "dynamo":
            from torch.export import Dim

            limits = {**DIM_MAX, "sequence": ref.max_sequence}  # None: any length
            dims = {axis: Dim(axis, min=1, max=limits[axis]) if limits[axis] else Dim(axis, min=1)
                    for axis in ref.input_axes}
            shapes = {name: {k: dims[axis] for k, axis in enumerate(ref.input_axes)} for name in names}
            torch.onnx.export(module, example, str(path), dynamo=True, input_names=names,
                              output_names=list(ref.output_names), dynamic_shapes=shapes,
                              opset_version=options.opset, external_data=True, verbose=False)
        else:
            axes = {name: dict(enumerate(ref.input_axes)) for name in names}
            axes.update(_output_axes(ref))
            with _traceable_attention_span(ref):
                torch.onnx.export(module, example, str(path), dynamo=False, input_names=names,
                                  output_names=list(ref.output_names), dynamic_axes=axes,
                                  opset_version=options.opset)
    if not path.is_file():
        raise DebertrtError(f"the {options.exporter} exporter wrote no model; try --exporter "
                            f"{'torchscript' if options.exporter == 'dynamo' else 'dynamo'}")


@contextlib.contextmanager
def _quiet_logger(name: str):
    """The exporters log many lines (missing torchvision ops, translation steps) no user needs."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _traceable_attention_span(ref: ReferenceModel):
    """DeBERTa v1's span is ``min(S, max_relative_positions)`` taken with Python's min, which
    tracing freezes to whichever branch the example took. Compute it with tensor ops instead
    while the torchscript tracer runs."""
    if ref.config.model_type != "deberta":
        yield
        return
    import torch
    from transformers.models.deberta import modeling_deberta

    def compute_attention_span(query_layer, key_layer, max_relative_positions):
        size = torch.maximum(torch._shape_as_tensor(query_layer)[-2], torch._shape_as_tensor(key_layer)[-2])
        return torch.clamp(size, max=max_relative_positions)

    original = modeling_deberta.compute_attention_span
    modeling_deberta.compute_attention_span = compute_attention_span
    try:
        yield
    finally:
        modeling_deberta.compute_attention_span = original


def validation_shapes(ref: ReferenceModel) -> list[tuple[int, ...]]:
    """The input shapes checked right after export: short, odd and 65 long (a tile plus one), plus
    one beyond ``max_position_embeddings`` for a model that takes any length."""
    shapes = list(VALIDATION_SHAPES)
    if ref.max_sequence is None:
        shapes.append((1, int(ref.config.max_position_embeddings) + BEYOND_TABLE))
    if len(ref.input_axes) == 3:
        shapes = [(b, VALIDATION_CHOICES[k % len(VALIDATION_CHOICES)], s) for k, (b, s) in enumerate(shapes)]
    return shapes


def validate_export(ref: ReferenceModel, path: str | os.PathLike, shapes=None,
                    atol: float = VALIDATION_ATOL) -> dict:
    """ONNX Runtime vs PyTorch on a few padded shapes (default ``validation_shapes``); raises if any
    output is off."""
    from debertrt.core.compare import output_errors
    from debertrt.core.data import TokenSpace, token_batch
    from debertrt.runtime.runners import OnnxRuntimeRunner, TorchRunner

    shapes = shapes or validation_shapes(ref)
    rng = np.random.default_rng(0)
    worst = {}
    space = TokenSpace.of(ref)
    with TorchRunner(ref) as torch_runner, OnnxRuntimeRunner(path) as ort_runner:
        for shape in shapes:
            feed = token_batch(space, shape[0], shape[-1], rng, choices=shape[1] if len(shape) == 3 else 1)
            expected = torch_runner.infer(feed)
            got = ort_runner.infer(feed)
            for name in ref.output_names:
                err = output_errors(expected[name], got[name], feed["attention_mask"])["max_abs"]
                worst[name] = max(worst.get(name, 0.0), err)
                if not err <= atol:
                    raise DebertrtError(
                        f"exported {name} differs from PyTorch by {err:.3g} (> {atol:g}) at shape {list(shape)} "
                        f"({', '.join(ref.input_axes)}); try the other exporter (--exporter)")
    return {"shapes": [list(s) for s in shapes], "atol": atol, "max_abs": worst}
