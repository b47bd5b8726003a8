"""Runners: one per target, one contract.

A runner is a context manager; ``infer(feed)`` takes a dict of integer arrays named like the
model inputs and returns a dict of float32 arrays named like the outputs. The base class
checks state and inputs (names, integer dtype, one shared shape of the target's rank:
[batch, sequence], or [batch, choices, sequence] for multiple choice, the longest sequence
the target takes) before any work; subclasses write only ``_activate``/``_infer``/``_deactivate``.
Inputs the target does not take (a tokenizer's ``token_type_ids`` for a model without token
types) are dropped, with a note logged once.

    with open_runner("out/model.int8.onnx") as runner:
        logits = runner.infer({"input_ids": ids, "attention_mask": mask})["logits"]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from debertrt.core.errors import DebertrtError, InternalError, NotRunnable
from debertrt.core.log import logger


INPUT_LAYOUTS = {2: "[batch, sequence]", 3: "[batch, choices, sequence]"}


class Runner:
    name = "runner"
    runtime = "unknown"

    def __init__(self, input_names=None, max_sequence: int | None = None, input_rank: int | None = None):
        self.input_names = tuple(input_names) if input_names else None
        self.max_sequence = max_sequence
        self.input_rank = input_rank  # 2: [batch, sequence]; 3: [batch, choices, sequence]; None: either
        self._active = False
        self._dropped_noted: set[str] = set()

    def __enter__(self):
        self._activate()
        self._active = True
        return self

    def __exit__(self, *exc):
        self._active = False
        self._deactivate()
        return False

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._active:
            raise InternalError(f"{self.name}: infer() called outside 'with runner:'")
        return self._infer(self.check_feed(feed))

    def check_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feed`` restricted to this runner's inputs, each checked: integer, of the runner's rank, one shape."""
        names = self.input_names or tuple(feed)
        missing = [n for n in names if n not in feed]
        if missing:
            raise DebertrtError(f"{self.name}: inputs {missing} are missing from the batch (it takes "
                                f"{', '.join(names)})")
        extra = sorted(set(feed) - set(names) - self._dropped_noted)
        if extra:
            logger.info("%s: the model takes no %s; dropped from the feed", self.name, ", ".join(extra))
            self._dropped_noted.update(extra)
        ranks = (self.input_rank,) if self.input_rank else (2, 3)
        layout = " or ".join(INPUT_LAYOUTS[r] for r in ranks)
        checked, shape = {}, None
        for name in names:
            value = np.asarray(feed[name])
            if value.dtype.kind not in "iu":
                raise DebertrtError(f"{self.name}: input {name} must hold integers, got {value.dtype}")
            if value.ndim not in ranks or 0 in value.shape:
                raise DebertrtError(f"{self.name}: input {name} must be a non-empty {layout} array, "
                                    f"got shape {list(value.shape)}")
            if shape is not None and value.shape != shape:
                raise DebertrtError(f"{self.name}: input {name} has shape {list(value.shape)}, the other inputs "
                                    f"{list(shape)}")
            shape = value.shape
            checked[name] = np.ascontiguousarray(value, dtype=np.int64)
        if self.max_sequence is not None and shape[-1] > self.max_sequence:
            raise DebertrtError(
                f"{self.name}: sequence length {shape[-1]} exceeds the supported maximum {self.max_sequence}; "
                f"truncate the inputs or rebuild for a longer profile")
        return checked

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _infer(self, feed):
        raise NotImplementedError


class TorchRunner(Runner):
    """The PyTorch fp32 reference."""

    runtime = "pytorch-fp32"

    def __init__(self, ref):
        super().__init__(ref.input_names, ref.max_sequence, len(ref.input_axes))
        self.ref = ref
        self.name = f"pytorch:{ref.name}"

    def _activate(self):
        self._module = self.ref.forward_module()

    def _infer(self, feed):
        import torch

        with torch.no_grad():
            outs = self._module(*(torch.from_numpy(feed[n]) for n in self.ref.input_names))
        return {name: t.float().numpy() for name, t in zip(self.ref.output_names, outs)}


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on the CPU; plugin nodes run through the NumPy reference ops."""

    runtime = "onnxruntime-cpu"

    def __init__(self, path: str | os.PathLike, max_sequence: int | None = None):
        super().__init__(None, max_sequence)
        self.path = Path(path)
        self.name = f"onnxruntime:{self.path.name}"

    def _activate(self):
        from debertrt.plugins.ort import ort_session

        self._session = ort_session(self.path)
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.input_rank = len(self._session.get_inputs()[0].shape)
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _deactivate(self):
        self._session = None

    def _infer(self, feed):
        outs = self._session.run(self._output_names, feed)
        return {name: np.asarray(o, dtype=np.float32) for name, o in zip(self._output_names, outs)}


class TensorRTRunner(Runner):
    """A TensorRT / TensorRT-RTX engine; entering it raises ``NotRunnable`` where this machine cannot run it."""

    def __init__(self, path: str | os.PathLike, max_sequence: int | None = None,
                 plugin_library: str | os.PathLike | None = None, cuda_graph: bool = False):
        from .engine_json import EngineMetadata

        self.metadata = EngineMetadata(path)
        super().__init__(self.metadata.input_names, max_sequence, self.metadata.input_rank)
        self.path = self.metadata.plan_path
        self.name = f"{self.metadata.flavour.name}:{self.path.name}"
        self.runtime = f"{self.metadata.flavour.name}-{self.metadata.version}"
        self.plugin_library = plugin_library
        self.cuda_graph = cuda_graph
        self._engine = None

    def _activate(self):
        from .engine import Engine, unavailable_reason

        reason = unavailable_reason(self.metadata)
        if reason:
            raise NotRunnable(reason)
        self._engine = Engine(self.path, plugin_library=self.plugin_library, cuda_graph=self.cuda_graph).activate()

    def _deactivate(self):
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def _infer(self, feed):
        outputs = self._engine.infer(feed)
        return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}


def open_runner(path: str | os.PathLike, max_sequence: int | None = None) -> Runner:
    """The runner for an artifact, chosen by its kind (``.onnx`` or ``.plan``)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxRuntimeRunner(path, max_sequence=max_sequence)
    if path.suffix == ".plan":
        return TensorRTRunner(path, max_sequence=max_sequence)
    raise DebertrtError(f"{path}: unknown artifact kind {path.suffix!r}; give an .onnx or .plan file")
