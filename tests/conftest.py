"""Shared fixtures. Exports are slow (a dynamo export takes ~15-25 s here), so each
(preset, task, exporter, config overrides) is exported once per test session."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(preset, task, exporter, overrides=None) -> Path`` of ``model.onnx``, memoised.

    The export is the library's default (validated against PyTorch, manifest written);
    treat the directory as read-only: write derived artifacts into your own tmp_path.
    """
    from debertrt.compiler.export import ExportOptions, export
    from debertrt.core.models import load_model

    cache = {}

    def get(preset: str, task: str, exporter: str = "dynamo", overrides: dict | None = None):
        key = (preset, task, exporter, json.dumps(overrides or {}, sort_keys=True))
        if key not in cache:
            name = f"{preset}-{task}-{exporter}" + (f"-{len(cache)}" if overrides else "")
            out = tmp_path_factory.mktemp(name, numbered=True)
            ref = load_model(preset, task, config_overrides=overrides)
            cache[key] = export(ref, out, ExportOptions(exporter=exporter))
        return cache[key]

    return get
