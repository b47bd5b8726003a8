"""The DisentangledFlashAttention Triton kernel, checked on the CPU.

Every check runs in a subprocess: Triton's interpreter needs TRITON_INTERPRET=1 before
triton is imported, and compiling must not share a process with interpreting.

- the interpreter matrix (``flash.check interpret``: S in {1, 17, 64, 65, 130}, 1-2 heads,
  c2p-only / p2c-only / both, v1 / v2 / v3 tables, right / left / all-padding rows, float32
  <= 1e-4 and float16 <= 2e-3 vs the NumPy oracle, plus odd tiles, head dims and tables), in
  two parallel shards;
- the matrix fails on a kernel with a planted off-by-one in its window (two plants), while
  the same unmodified copy passes;
- tiny v1 / v2 / v3 models patched to run their attention through the interpreted kernel
  give transformers' logits on non-padding positions;
- the kernel compiles for sm_90 without a GPU, with no register spills and shared memory
  within an H100's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install -e '.[dev]' brings it)", allow_module_level=True)

from debertrt.plugins.flash import check  # noqa: E402  (imports no triton)

KERNEL_SOURCE = Path(check.__file__).with_name("kernel.py")
# Plants: the window's first relative position, and the diagonal slot of tile element (a, c).
PLANTS = {
    "window start": ("        r_lo = i0 - j0 - (BLOCK_N - 1)\n", "        r_lo = i0 - j0 - BLOCK_N\n"),
    "diagonal slot": ("    diag = rows[:, None] - cols[None, :] + (BLOCK_N - 1)\n",
                      "    diag = rows[:, None] - cols[None, :] + BLOCK_N\n"),
}


def run_python(code_or_args, timeout: int = 300, interpret: bool = True):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc, timeout: int = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_interpreter_matrix(tmp_path):
    shards = 2
    procs = [run_python(["-m", "debertrt.plugins.flash.check", "interpret", "--shard", f"{i}/{shards}",
                         "--json", str(tmp_path / f"shard{i}.json")]) for i in range(shards)]
    outputs = [finish(p) for p in procs]
    for rc, out in outputs:
        assert rc == 0, out
    cases = [c for i in range(shards) for c in json.loads((tmp_path / f"shard{i}.json").read_text())["cases"]]
    assert len(cases) == len(check.interpret_cases())
    assert all(c["passed"] and c["nonfinite"] == 0 for c in cases)
    assert {c["dtype"] for c in cases} == {"float32", "float16"}
    names = " ".join(c["case"] for c in cases)
    for needle in ("S=1 ", "S=17 ", "S=64 ", "S=65 ", "S=130 ", "H=1 ", "H=2 ", " v1 ", " v2 ", " v3 ", " jumpy ",
                   " random ", " c2p ", " p2c ", " both "):
        assert needle in names, needle
    print("\n".join(out for _, out in outputs))


MUTANT_DRIVER = textwrap.dedent("""
    import importlib.util, json, sys
    from debertrt.plugins.flash import check

    verdicts = {}
    for label, path, limit in json.loads(sys.argv[1]):
        name = "debertrt.plugins.flash.scratch_kernel_%d" % len(verdicts)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        results = check.run_interpret(check.interpret_cases()[:limit], launch=module.flash_attention,
                                      stop_on_failure=True, log=lambda line: None)
        verdicts[label] = [r.passed for r in results]
    print("VERDICTS " + json.dumps(verdicts))
""")


def test_planted_off_by_one_in_the_window_fails_the_matrix(tmp_path):
    source = KERNEL_SOURCE.read_text()
    runs = []
    for label, (line, planted) in PLANTS.items():
        assert source.count(line) == 1, f"the kernel no longer has {line!r}: update the plant"
        path = tmp_path / f"planted_{len(runs)}.py"
        path.write_text(source.replace(line, planted))
        runs.append((label, str(path), None))
    control = tmp_path / "control.py"
    control.write_text(source)
    runs.append(("control", str(control), 12))
    rc, out = finish(run_python([*["-c", MUTANT_DRIVER], json.dumps(runs)]))
    assert rc == 0, out
    verdicts = json.loads(out.split("VERDICTS ", 1)[1])
    for label in PLANTS:
        assert verdicts[label] and not all(verdicts[label]), f"planted {label!r} passed the matrix"
    assert len(verdicts["control"]) == 12 and all(verdicts["control"])


PATCHED_DRIVER = textwrap.dedent("""
    import numpy as np, torch
    from debertrt.core.models import load_model
    from debertrt.plugins.flash import check, hf

    for preset in ("tiny-deberta", "tiny-deberta-v2", "tiny-deberta-v3"):
        model = load_model(preset, "token-classification").module
        seq = 21
        mask = torch.from_numpy(check.padding_mask(("full", "right", "left", "all-pad"), seq,
                                                   np.random.default_rng(0)).astype(np.int64))
        ids = torch.randint(1, 200, mask.shape, generator=torch.Generator().manual_seed(0)) * mask
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask).logits
            with hf.patched(model, backend="triton"):
                got = model(input_ids=ids, attention_mask=mask).logits
        real = mask.bool()
        err = (got - expected)[real].abs().max().item()
        print(preset, "max abs logit error", err, "finite", bool(torch.isfinite(got).all()))
        assert torch.isfinite(got).all() and err < 1e-4, (preset, err)
    print("PATCHED OK")
""")


def test_patched_models_run_the_interpreted_kernel():
    rc, out = finish(run_python(PATCHED_DRIVER))
    assert rc == 0 and "PATCHED OK" in out, out


def test_kernel_compiles_for_sm90_without_a_gpu(tmp_path):
    """Triton's compiler (bundled ptxas) builds the kernel for sm_90 on this CPU machine."""
    out_json = tmp_path / "aot.json"
    rc, out = finish(run_python(["-m", "debertrt.plugins.flash.aot", "--arch", "90", "--dtype", "float16",
                                 "--head-dim", "64", "--json", str(out_json), "--ptx-dir", str(tmp_path)],
                                interpret=False), timeout=600)
    assert rc == 0, out
    (kernel,) = json.loads(out_json.read_text())
    ptx = (tmp_path / "flash_sm90_float16_d64.ptx").read_text()
    assert ".target sm_90" in ptx and ".entry _flash_fwd" in ptx
    assert kernel["shared_bytes"] <= 227 * 1024  # an H100's shared memory per block
    assert kernel["registers"] is not None and kernel["registers"] <= 255 and kernel["spill_stack_bytes"] == 0, out
    print(out)
