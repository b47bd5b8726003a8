"""Runners: one per target, one interface.

A runner is a context manager; ``infer(feed)`` takes a dict of int64 arrays named like the
ONNX inputs and returns a dict of float32 arrays named like the outputs. The base class
checks state and inputs, subclasses write only ``_activate``/``_infer``/``_deactivate``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DebertrtError, InternalError


class Runner:
    name = "runner"
    runtime = "unknown"

    def __init__(self, input_names=None, max_sequence: int | None = None):
        self.input_names = tuple(input_names) if input_names else None
        self.max_sequence = max_sequence
        self._active = False

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
        if self.input_names is not None:
            missing = set(self.input_names) - set(feed)
            if missing:
                raise DebertrtError(f"{self.name}: inputs {sorted(missing)} are missing from the batch")
            feed = {k: feed[k] for k in self.input_names}
        sequence = feed["input_ids"].shape[1]
        if self.max_sequence is not None and sequence > self.max_sequence:
            raise DebertrtError(
                f"{self.name}: sequence length {sequence} exceeds the supported maximum {self.max_sequence}; "
                f"truncate the inputs or rebuild for a longer profile")
        return self._infer(feed)

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
        super().__init__(ref.input_names, ref.max_sequence)
        self.ref = ref
        self.name = f"pytorch:{ref.name}"

    def _activate(self):
        from .export import export_module

        self._module = export_module(self.ref)

    def _infer(self, feed):
        import torch

        with torch.no_grad():
            outs = self._module(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in self.ref.input_names))
        return {name: t.float().numpy() for name, t in zip(self.ref.output_names, outs)}


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on the CPU; plugin nodes run through the NumPy reference op."""

    runtime = "onnxruntime-cpu"

    def __init__(self, path: str | os.PathLike, max_sequence: int | None = None):
        super().__init__(None, max_sequence)
        self.path = Path(path)
        self.name = f"onnxruntime:{self.path.name}"

    def _activate(self):
        from debertrt.plugins.ort import ort_session

        self._session = ort_session(self.path)
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _deactivate(self):
        self._session = None

    def _infer(self, feed):
        outs = self._session.run(self._output_names, feed)
        return {name: np.asarray(o, dtype=np.float32) for name, o in zip(self._output_names, outs)}
