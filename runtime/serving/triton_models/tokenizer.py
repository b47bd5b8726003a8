"""Triton Python-backend model: TEXT (+ TEXT_PAIR) -> the model's inputs, OFFSETS and SEQUENCE_IDS.

``debertrt export-triton`` writes this file as ``<name>-tokenizer/1/model.py``, beside
``debertrt_text.py`` and ``tokenizer/`` (the checkpoint's fast tokenizer files). It needs
NumPy and ``tokenizers`` in the server's Python environment, nothing else.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # debertrt_text.py lies beside this file

from debertrt_text import TextEncoder, answer_each, model_parameters, request_texts  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        names = tuple(params["input_names"].split(","))
        self.dtypes = dict(zip(names, params["input_dtypes"].split(",")))
        self.encoder = TextEncoder(str(Path(__file__).resolve().parent / "tokenizer" / "tokenizer.json"), names,
                                   max_length=int(params["max_length"]), pad_id=int(params["pad_id"]),
                                   pad_to_multiple_of=int(params["pad_to_multiple_of"]),
                                   min_length=int(params.get("min_length", 1)),
                                   needs_pair=params["needs_pair"] == "true")

    def execute(self, requests):
        return answer_each(requests, self._encode)

    def _encode(self, request):
        arrays = self.encoder.encode(*request_texts(request))
        return {name: value.astype(self.dtypes.get(name, value.dtype), copy=False) for name, value in arrays.items()}
