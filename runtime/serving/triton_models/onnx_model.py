"""Triton Python-backend model: the ONNX artifact run by ONNX Runtime on the CPU.

``debertrt export-triton --onnx`` writes this file as ``<name>-model/1/model.py`` beside
``debertrt_text.py`` and the ONNX file. Sessions come from ``debertrt.plugins.ort``, so plugin
graphs (DisentangledAttention nodes) run too, through the NumPy reference op: debertrt must
be installed in the server's Python environment.

Triton's dynamic batcher hands over requests of equal shape together; they run as one
batch. If that batch fails, each request runs alone, so only the bad one gets the error.
"""

import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))  # debertrt_text.py lies beside this file

from debertrt_text import TextError, error_response, model_parameters, respond  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        from debertrt.plugins.ort import ort_session

        params = model_parameters(args)
        self.max_length = int(params["max_length"])
        self.session = ort_session(Path(__file__).resolve().parent / params["onnx"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for k, request in enumerate(requests):
            try:
                feed = self._feed(request)
            except Exception as exc:
                responses[k] = error_response(exc)
                continue
            groups.setdefault(tuple((n, a.shape, a.dtype.str) for n, a in feed.items()), []).append((k, feed))
        for members in groups.values():
            try:
                self._run(members, responses)
            except Exception:
                for member in members:  # find the request that broke the batch; the others still get answers
                    try:
                        self._run([member], responses)
                    except Exception as exc:
                        responses[member[0]] = error_response(exc)
        return responses

    def _feed(self, request):
        feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
        length = feed[self.input_names[0]].shape[1]
        if length > self.max_length:
            raise TextError(f"sequence length {length} exceeds this model's maximum {self.max_length}")
        return feed

    def _run(self, members, responses):
        feed = {name: np.concatenate([m[1][name] for m in members]) for name in self.input_names}
        results = self.session.run(self.output_names, feed)
        start = 0
        for k, member_feed in members:
            rows = member_feed[self.input_names[0]].shape[0]
            responses[k] = respond({name: value[start:start + rows] for name, value in zip(self.output_names, results)})
            start += rows
