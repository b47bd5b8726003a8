"""The CLI: the main job, and bad input answered with one line, a non-zero exit and no partial files."""

import subprocess
import sys

import pytest

from debertrt.compiler import export as export_module
from debertrt.compiler.cli import main
from debertrt.core.errors import DebertrtError


def _run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("debertrt: error:")
    return lines[0]


def test_missing_checkpoint_directory(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(["export", "--model", str(tmp_path / "nope"), "--task", "base", "--out", str(out)], capsys)
    assert code == 1
    assert "not found" in _one_line_error(err)
    assert not out.exists()


def test_non_deberta_config(tmp_path, capsys):
    from transformers import BertConfig

    ckpt = tmp_path / "bert"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(ckpt)
    code, _, err = _run(["export", "--model", str(ckpt), "--task", "base", "--out", str(tmp_path / "out")], capsys)
    assert code == 1
    line = _one_line_error(err)
    assert "'bert'" in line and "not DeBERTa" in line
    assert not (tmp_path / "out").exists()


def test_checkpoint_without_weights(tmp_path, capsys):
    from debertrt.core.models import preset_config

    ckpt = tmp_path / "ckpt"
    preset_config("tiny-deberta-v3").save_pretrained(ckpt)
    code, _, err = _run(["export", "--model", str(ckpt), "--task", "base", "--out", str(tmp_path / "o")], capsys)
    assert code == 1
    assert "no weights" in _one_line_error(err)


def test_unknown_task(tmp_path, capsys):
    code, _, err = _run(["export", "--model", "tiny-deberta-v3", "--task", "summarization",
                         "--out", str(tmp_path / "o")], capsys)
    assert code == 1
    assert "unknown task 'summarization'" in _one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_bad_flag_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", "tiny-deberta-v3", "--task", "base", "--out", str(tmp_path), "--exporter", "tf"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--exporter" in err


def test_sequence_longer_than_the_model(exported, tmp_path, capsys):
    path = exported("tiny-deberta-v2", "sequence-classification", "torchscript")  # absolute positions: 512
    report = tmp_path / "report"
    code, _, err = _run(["parity", "--model", "tiny-deberta-v2", "--task", "sequence-classification",
                         "--artifact", str(path), "--max-length", "600", "--out", str(report)], capsys)
    assert code == 1
    line = _one_line_error(err)
    assert "600" in line and "512" in line
    assert not list(tmp_path.iterdir())


def test_failed_export_leaves_no_partial_files(tmp_path, capsys, monkeypatch):
    def broken_validation(*args, **kwargs):
        raise DebertrtError("exported logits differ from PyTorch by 1 (> 0.0001)")

    monkeypatch.setattr(export_module, "validate_export", broken_validation)
    code, _, err = _run(["export", "--model", "tiny-deberta-v3", "--task", "sequence-classification",
                         "--exporter", "torchscript", "--out", str(tmp_path)], capsys)
    assert code == 1
    assert "differ" in _one_line_error(err)
    assert list(tmp_path.iterdir()) == []  # no model.onnx, no staging dir, no manifest


def test_main_job_runs_with_no_arguments(tmp_path):
    """README's main job: `debertrt build` with no arguments, here in a scratch directory."""
    import json
    import importlib.util

    result = subprocess.run([sys.executable, "-m", "debertrt.compiler.cli", "build"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "debertrt-out"
    onnx_artifacts = ["model.onnx", "model.plugin.onnx", "model.fp16.onnx", "model.plugin.fp16.onnx",
                      "model.int8.onnx", "model.plugin.int8.onnx"]
    for name in onnx_artifacts:
        assert (out / name).is_file(), name
    report = json.loads((out / "parity.json").read_text())
    checked = [e["path"].rsplit("/", 1)[-1] for e in report["artifacts"]]
    assert checked[:6] == onnx_artifacts  # every artifact is checked, not only the fp32 one
    assert all(e["verdict"] == "passed" for e in report["artifacts"] if e["status"] == "ran")
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert {"export", "reference", "rewrite", "fp16", "int8", "parity"} <= set(stages)
    plugin_int8 = json.loads((out / "model.plugin.int8.json").read_text())["fallback"]
    plain_int8 = json.loads((out / "model.int8.json").read_text())["summary"]
    assert plugin_int8["sibling"]["float_groups"] == plain_int8["float_groups"]  # started from the plain graph's decision
    for name, entry in stages.items():  # what each stage cost, and the summary shows it
        cost = entry["resources"]
        assert cost["wall_s"] > 0 and cost["cpu_s"] > 0, name
        assert cost["peak_rss_mib"] >= cost["rss_start_mib"] > 0, name
        assert any(line.split()[:1] == [name] for line in result.stdout.splitlines()), name
    assert "time and memory per stage:" in result.stdout
    assert (out / "reference.npz").is_file()  # PyTorch ran once, every artifact is judged against it
    if importlib.util.find_spec("tensorrt_rtx_bindings") or importlib.util.find_spec("tensorrt"):
        engines = sorted(p.name for p in out.glob("engine*.plan"))
        assert len(engines) == 3, engines
        assert all((out / name.replace(".plan", ".json")).is_file() for name in engines)
    else:
        print("no engine builder installed: engines not checked")
    assert (out / "parity.md").is_file()
    assert "report:" in result.stdout and "PASSED" in result.stdout


def test_readme_commands_parse():
    """Every `debertrt ...` command shown in README.md is accepted by the parser (flags, profiles)."""
    import re
    import shlex
    from pathlib import Path

    from debertrt.compiler.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("debertrt "):
                commands.append(shlex.split(line)[1:])
    assert len(commands) >= 5
    for argv in commands:
        args = build_parser().parse_args(argv)
        assert args.command, argv
