"""Triton Python-backend model: the model's outputs -> the task's answer (labels and scores,
entities, or answer spans; see ``debertrt_text.postprocess``).

``debertrt export-triton`` writes this file as ``<name>-postprocess/1/model.py`` beside
``debertrt_text.py``. It needs NumPy in the server's Python environment, nothing else.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # debertrt_text.py lies beside this file

from debertrt_text import answer_each, model_parameters, optional_input, postprocess, request_texts  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.task = params["task"]
        self.labels = json.loads(params["labels"])
        self.model_outputs = params["model_outputs"].split(",")

    def execute(self, requests):
        return answer_each(requests, self._answer)

    def _answer(self, request):
        outputs = {name: optional_input(request, name) for name in self.model_outputs}
        tokens = {name: optional_input(request, name) for name in ("attention_mask", "OFFSETS", "SEQUENCE_IDS")}
        texts, pairs = request_texts(request)
        return postprocess(self.task, outputs, tokens, texts, pairs, self.labels)
