"""ONNX Runtime sessions for every graph debertrt writes."""

from __future__ import annotations

import os


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` on the CPU for ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
