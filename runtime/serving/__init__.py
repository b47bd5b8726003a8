"""Serving on Triton Inference Server: the text pipeline's logic (``text``), the Python-backend
models ``debertrt export-triton`` copies into a repository (``triton_models/``), the Python
environment those models run in (``pyenv``), a local server (``server``) and its load test
(``bench``). Nothing here imports tritonclient or onnxruntime until it is used.
"""
