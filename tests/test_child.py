"""Stages in child processes (``core.child``): results and errors come back, a killed child is a
one-line error, and a build whose stages run in children never loads the weights in the parent."""

from __future__ import annotations

import json
import os
import signal

import pytest

from debertrt.core.child import ChildError, run_in_child
from debertrt.core.errors import DebertrtError

pytestmark = pytest.mark.xdist_group("test_child")


def _pid_and(value):
    return os.getpid(), value


def _refuse(message):
    raise DebertrtError(message)


def _bug():
    return {}["missing"]


def _killed():
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_child_returns_its_result_and_raises_our_errors_here():
    pid, value = run_in_child("probe", _pid_and, [1, 2])
    assert pid != os.getpid() and value == [1, 2]
    with pytest.raises(DebertrtError, match="^use a smaller batch$"):
        run_in_child("probe", _refuse, "use a smaller batch")
    with pytest.raises(ChildError, match="KeyError: 'missing'"):  # a bug keeps the child's traceback
        run_in_child("probe", _bug)


def test_a_killed_child_is_a_one_line_error_naming_the_fix():
    with pytest.raises(DebertrtError) as caught:
        run_in_child("int8", _killed)
    message = str(caught.value)
    assert "\n" not in message
    assert "int8" in message and "SIGKILL" in message and "out-of-memory" in message


def test_an_isolated_build_runs_every_stage_in_a_child_and_never_loads_the_weights_here(tmp_path):
    from debertrt.compiler.pipeline import BuildOptions, build
    from debertrt.core.data import datasets_for
    from debertrt.core.models import load_model

    checkpoint = tmp_path / "checkpoint"
    load_model("tiny-deberta-v3", "sequence-classification").module.save_pretrained(checkpoint)
    ref = load_model(str(checkpoint), "sequence-classification", lazy=True)
    assert ref.module is None and ref.weight_bytes() > 0
    datasets = datasets_for(ref, ["calibration", "fallback", "parity"], batches=2, batch_size=4, max_length=32)
    out = tmp_path / "out"
    result = build(ref, out, BuildOptions(precisions=("fp32", "int8"), backend="none", isolate=True), datasets)

    assert ref.module is None  # the export child loaded them; this process never did
    assert result.parity["verdict"] == "passed", result.parity
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert {"export", "reference", "rewrite", "int8", "int8:model.plugin.onnx", "parity"} <= set(stages)
    assert all("resources" in entry for entry in stages.values())
    assert set(result.costs) == set(stages)
