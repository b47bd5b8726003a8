"""DisentangledFlashAttention in PyTorch, on the CPU.

- ``debertrt::disentangled_flash_attention`` passes ``torch.library.opcheck`` (schema, fake
  implementation, dispatch) and on CPU equals the NumPy oracle;
- ``hf.patched(model)`` makes tiny v1 / v2 / v3 models (c2p+p2c, and c2p-only / p2c-only)
  give transformers' own logits on non-padding positions, with right-, left- and
  all-padding rows, and restores the original forwards on exit (also after an error);
- it refuses models in training mode, without relative attention, with v1 talking heads,
  and masks that are not padding masks; output_attentions runs transformers' forward;
- ``scripts/bench_attention.py`` without CUDA exits 2 with a one-line message.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from debertrt.core.errors import DebertrtError  # noqa: E402
from debertrt.core.models import load_model  # noqa: E402
from debertrt.plugins.flash import check, hf, op, reference  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def torch_inputs(case, seed=0):
    inputs = check.case_inputs(case, np.random.default_rng(seed))
    return inputs, {k: None if a is None else torch.from_numpy(a) for k, a in inputs.items()}


@pytest.mark.parametrize("presence", sorted(check.PRESENCE))
def test_custom_op_opcheck_and_cpu_result(presence):
    inputs, tensors = torch_inputs(check.Case(9, 2, 8, presence, "v3", "float32"))
    args = (tensors["q"], tensors["k"], tensors["v"], tensors["pos_key"], tensors["pos_query"], tensors["mask"],
            tensors["rel_table"], 0.8, 0.25, 0.2)
    torch.library.opcheck(torch.ops.debertrt.disentangled_flash_attention.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    got = op.disentangled_flash_attention(*args)
    np.testing.assert_allclose(got.numpy(), reference.flash_attention(**inputs, **check.SCALES), atol=1e-6)


def token_inputs(seq=19, seed=0):
    mask = torch.from_numpy(check.padding_mask(("full", "right", "left", "all-pad"), seq,
                                               np.random.default_rng(seed)).astype(np.int64))
    ids = torch.randint(1, 200, mask.shape, generator=torch.Generator().manual_seed(seed)) * mask
    return ids, mask


@pytest.mark.parametrize("preset,overrides", [
    ("tiny-deberta", None), ("tiny-deberta-v2", None), ("tiny-deberta-v3", None),
    ("tiny-deberta", {"pos_att_type": ["p2c"]}), ("tiny-deberta-v3", {"pos_att_type": ["c2p"]}),
    ("tiny-deberta-v2", {"pos_att_type": ["p2c"], "share_att_key": True}),
])
def test_patched_model_gives_transformers_logits(preset, overrides):
    model = load_model(preset, "token-classification", config_overrides=overrides).module
    ids, mask = token_inputs()
    originals = [m.forward for m in hf.attention_modules(model)]
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        with hf.patched(model) as same:
            assert same is model
            got = model(input_ids=ids, attention_mask=mask).logits
            # output_attentions asks for probabilities: transformers' own forward runs
            with_probs = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        after = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.isfinite(got).all()
    assert (got - expected)[real].abs().max().item() < 1e-4
    assert with_probs.attentions is not None and torch.equal(with_probs.logits, expected)
    assert torch.equal(after, expected)
    assert [m.forward for m in hf.attention_modules(model)] == originals
    assert all("forward" not in m.__dict__ for m in hf.attention_modules(model))


def test_patched_routes_every_layer_through_the_op(monkeypatch):
    model = load_model("tiny-deberta-v3", "base").module
    calls = []
    real = hf._backend("reference")
    monkeypatch.setattr(hf, "_backend", lambda name: lambda *a: calls.append(a[0].shape) or real(*a))
    ids, mask = token_inputs(seq=7)
    with torch.no_grad(), hf.patched(model):
        model(input_ids=ids, attention_mask=mask)
    assert calls == [torch.Size([4, 4, 7, 8])] * model.config.num_hidden_layers


def test_forwards_come_back_after_an_error():
    model = load_model("tiny-deberta-v2", "base").module
    with pytest.raises(RuntimeError, match="boom"):
        with hf.patched(model, backend="reference"):
            raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in hf.attention_modules(model))


def test_patched_refusals():
    model = load_model("tiny-deberta-v3", "base").module
    with pytest.raises(DebertrtError, match="model.eval"):
        with hf.patched(model.train()):
            pass
    model.eval()
    with pytest.raises(DebertrtError, match="unknown backend"):
        with hf.patched(model, backend="cuda"):
            pass
    plain = load_model("tiny-deberta-v3", "base", config_overrides={"relative_attention": False}).module
    with pytest.raises(DebertrtError, match="nothing for DisentangledFlashAttention to fuse"):
        with hf.patched(plain):
            pass
    talking = load_model("tiny-deberta", "base", config_overrides={"talking_head": True}).module
    with pytest.raises(DebertrtError, match="talking_head"):
        with hf.patched(talking):
            pass
    attention = hf.attention_modules(model)[0]
    hidden = torch.randn(2, 5, model.config.hidden_size)
    causal = torch.ones(2, 1, 5, 5, dtype=torch.long).tril()  # not of the padding form mask_i * mask_j
    with pytest.raises(DebertrtError, match="not a padding mask"):
        with torch.no_grad(), hf.patched(model):
            attention(hidden, causal, rel_embeddings=model.encoder.get_rel_embedding())


def test_bench_attention_without_cuda_exits_2():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the benchmark would run")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_attention.py")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "CUDA" in proc.stderr


README = REPO / "plugins" / "flash" / "README.md"


def test_readme_states_the_spec():
    from debertrt.plugins import spec

    op = spec.DISENTANGLED_FLASH_ATTENTION
    text = README.read_text()
    attributes = re.findall(r"^\| `(\w+)` \| (int|float) \|", text, re.M)
    assert attributes == [(f.name, f.kind) for f in op.fields]
    inputs = re.findall(r"^\| `(\w+)`(?: \((has_\w+)\))? \| `\[", text, re.M)
    assert inputs == [(t.name, t.present_when or "") for t in op.inputs]
    assert f"op_type `{op.op_type}`, domain `{op.domain}`" in text
    assert f'`plugin_namespace="{op.plugin_namespace}"` and `plugin_version="{op.plugin_version}"`' in text
    for dtype, tol in op.tolerances.items():
        assert f"{dtype} {tol:.0e}".replace("e-0", "e-") in text


def test_readme_example_runs():
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    exec(compile(code, str(README), "exec"), {})


def test_bench_cases_agree_on_the_cpu():
    """The benchmark's peers that run without a GPU compute what ours computes (HF eager at both levels)."""
    import contextlib

    from debertrt.plugins.flash import bench

    modules = bench.v3_base_attention(torch.device("cpu"), torch.float32)
    with torch.no_grad(), contextlib.ExitStack() as stack:
        cases = bench.build_cases(2, 24, torch.device("cpu"), torch.float32, modules, None, False, (), stack)
        ours = cases[("attention", "ours")]()
        ran = {key: fn() for key, fn in cases.items() if not isinstance(fn, bench.Skip)}
    assert {("attention", "hf-eager"), ("module", "hf-eager"), ("module", "ours")} <= set(ran)
    for key, out in ran.items():
        assert out.shape == ours.shape and (out - ours).abs().max().item() < 1e-4, key
    assert "libdebertrt_kernels.so" in str(cases[("attention", "gather-plugin")])
    report = {"rows": [{"level": k[0], "peer": k[1], "batch": 2, "seq": 24, "ms": 1.0, "tflops": 2.0} for k in ran]}
    lines = bench.table(report)
    assert len(lines) == 2 + len(ran) and "B=2 S=24" in lines[0]
