"""DisentangledFlashAttention references against transformers' own attention modules.

- the NumPy oracle (``flash.reference``) on inputs projected by ``flash.hf.op_inputs`` equals
  transformers' ``DisentangledSelfAttention`` (v2/v3) and DeBERTa v1 attention on random
  weights, non-padding rows, for every config kind: v1, v2 (linear), v3 (log buckets, with
  max_relative_positions == and != 2 * position_buckets), c2p-only, p2c-only,
  share_att_key on/off, S below and above v1's max_relative_positions, with right-padded,
  left-padded, and all-padding rows;
- the plain-torch reference equals both, and the oracle elsewhere; padding rows are finite;
- input validation raises one-line DebertrtErrors; the spec's flash entry is well-formed.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
deberta_v2 = pytest.importorskip("transformers.models.deberta_v2.modeling_deberta_v2")
deberta_v1 = pytest.importorskip("transformers.models.deberta.modeling_deberta")

from debertrt.core.errors import DebertrtError  # noqa: E402
from debertrt.plugins import spec  # noqa: E402
from debertrt.plugins.flash import check, hf, reference, torch_reference  # noqa: E402

HIDDEN, HEADS = 32, 2

# name -> (model_type, config overrides)
CONFIGS = {
    "v1": ("deberta", dict(max_relative_positions=16)),
    "v1-c2p": ("deberta", dict(max_relative_positions=16, pos_att_type=["c2p"])),
    "v1-p2c": ("deberta", dict(max_relative_positions=16, pos_att_type=["p2c"])),
    "v2": ("deberta-v2", dict(max_relative_positions=12, position_buckets=-1, share_att_key=False)),
    "v2-share": ("deberta-v2", dict(max_relative_positions=12, position_buckets=-1, share_att_key=True)),
    "v2-c2p": ("deberta-v2", dict(max_relative_positions=12, position_buckets=-1, pos_att_type=["c2p"])),
    "v3": ("deberta-v2", dict(max_relative_positions=32, position_buckets=8, share_att_key=True)),  # 32 != 2*8
    "v3-2x": ("deberta-v2", dict(max_relative_positions=32, position_buckets=16, share_att_key=True)),
    "v3-noshare": ("deberta-v2", dict(max_relative_positions=24, position_buckets=8, share_att_key=False)),
    "v3-c2p": ("deberta-v2", dict(max_relative_positions=32, position_buckets=8, share_att_key=True,
                                  pos_att_type=["c2p"])),
    "v3-p2c": ("deberta-v2", dict(max_relative_positions=32, position_buckets=8, share_att_key=False,
                                  pos_att_type=["p2c"])),
}


def hf_attention(name: str, seed: int = 0):
    """A transformers attention module with random weights (biases included) and its rel_embeddings."""
    from transformers import AutoConfig

    model_type, overrides = CONFIGS[name]
    options = dict(hidden_size=HIDDEN, num_attention_heads=HEADS, relative_attention=True,
                   pos_att_type=["c2p", "p2c"], max_position_embeddings=512, norm_rel_ebd="none")
    options.update(overrides)
    config = AutoConfig.for_model(model_type, **options)
    torch.manual_seed(seed)
    module_class = deberta_v1.DisentangledSelfAttention if model_type == "deberta" else \
        deberta_v2.DisentangledSelfAttention
    module = module_class(config).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    rows = 2 * (module.max_relative_positions if model_type == "deberta" else module.pos_ebd_size)
    rel_embeddings = torch.randn(rows, HIDDEN)
    return module, rel_embeddings


def hf_forward(module, hidden, key_mask, rel_embeddings):
    """transformers' forward with the encoder's own extended mask and relative positions."""
    ext = deberta_v2.DebertaV2Encoder.get_attention_mask(None, torch.from_numpy(key_mask))
    if hf.is_v1(module):
        relative_pos = deberta_v1.build_relative_position(hidden, hidden)
    else:
        relative_pos = deberta_v2.build_relative_position(hidden, hidden, bucket_size=module.position_buckets,
                                                          max_position=module.max_relative_positions)
    context, _ = module(hidden, ext, relative_pos=relative_pos, rel_embeddings=rel_embeddings)
    return context


def numpy_inputs(module, hidden, rel_embeddings):
    inputs = hf.op_inputs(module, hidden, rel_embeddings)
    return {k: None if t is None else t.detach().numpy() for k, t in inputs.items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seq", [1, 9, 24])  # v1: S < and > max_relative_positions (span = min(S, 16))
def test_oracle_matches_transformers_attention(name, seq):
    module, rel_embeddings = hf_attention(name, seed=seq)
    facts = hf.layer_facts(module)
    batch_mask = check.padding_mask(("full", "right", "left", "all-pad"), seq, np.random.default_rng(seq))
    hidden = torch.randn(len(batch_mask), seq, HIDDEN)
    with torch.no_grad():
        expected = hf_forward(module, hidden, batch_mask, rel_embeddings).numpy()
        inputs = numpy_inputs(module, hidden, rel_embeddings)
    table = facts.rel_table(seq + 5)  # a table longer than S: offsets by Smax - 1
    got = reference.flash_attention(**inputs, mask=batch_mask, rel_table=table, **facts.scales())
    assert got.shape == expected.shape == (len(batch_mask), seq, HIDDEN) and got.dtype == np.float32
    real = batch_mask != 0
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-5, atol=2e-5)
    assert np.isfinite(got).all()
    as_torch = {k: None if a is None else torch.from_numpy(a) for k, a in inputs.items()}
    torch_got = torch_reference.flash_attention(**as_torch, mask=torch.from_numpy(batch_mask),
                                                rel_table=torch.from_numpy(table), **facts.scales()).numpy()
    np.testing.assert_allclose(torch_got[real], expected[real], rtol=1e-5, atol=2e-5)
    # The positional terms matter: dropping them changes the result well beyond the tolerance.
    dropped = dict(inputs, **{k: np.zeros_like(v) for k, v in inputs.items() if k.startswith("pos_") and v is not None})
    without = reference.flash_attention(**dropped, mask=batch_mask, rel_table=table, **facts.scales())
    if seq > 1:
        assert np.abs(without[real] - expected[real]).max() > 1e-2


def test_layer_facts_per_version():
    v1 = hf.layer_facts(hf_attention("v1")[0])
    assert (v1.version, v1.k_scale, v1.pos_scale, v1.span, v1.position_buckets) == ("v1", 1.0, 1.0, 16, 0)
    assert v1.q_scale == pytest.approx(1 / np.sqrt(16 * 3))
    v3 = hf.layer_facts(hf_attention("v3-c2p")[0])
    assert (v3.q_scale, v3.span, v3.position_buckets, v3.has_c2p, v3.has_p2c) == (1.0, 8, 8, True, False)
    assert v3.k_scale == v3.pos_scale == pytest.approx(1 / np.sqrt(16 * 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("presence", sorted(check.PRESENCE))
def test_torch_reference_equals_oracle(dtype, presence):
    case = check.Case(seq=33, heads=2, head_dim=16, presence=presence, table="v3", dtype=np.dtype(dtype).name)
    inputs = check.case_inputs(case, np.random.default_rng(3))
    expected = reference.flash_attention(**inputs, **check.SCALES)
    got = torch_reference.flash_attention(**{k: None if v is None else torch.from_numpy(v) for k, v in inputs.items()},
                                          **check.SCALES)
    assert got.dtype == getattr(torch, np.dtype(dtype).name)
    np.testing.assert_allclose(got.float().numpy(), expected.astype(np.float32), rtol=0,
                               atol=1e-6 if dtype == np.float32 else 1e-3)


def test_fully_padded_rows_are_finite_and_uniform():
    case = check.Case(seq=5, heads=1, head_dim=8, presence="both", table="v1", dtype="float16")
    inputs = check.case_inputs(case, np.random.default_rng(0))
    inputs["mask"][:] = 0
    out = reference.flash_attention(**inputs, **check.SCALES)
    assert np.isfinite(out).all()
    # transformers' behaviour for a row with every key masked: the mean of v
    mean_v = inputs["v"].astype(np.float32).mean(axis=2).reshape(out.shape[0], -1)
    np.testing.assert_allclose(out.astype(np.float32), np.repeat(mean_v[:, None, :], 5, axis=1), atol=2e-3)


def test_invalid_inputs_raise_one_line_errors():
    case = check.Case(seq=6, heads=2, head_dim=8, presence="both", table="v2", dtype="float32")
    good = check.case_inputs(case, np.random.default_rng(0))

    def fails(match, **changes):
        with pytest.raises(DebertrtError, match=match) as info:
            reference.flash_attention(**dict(good, **changes), **check.SCALES)
        assert "\n" not in str(info.value)

    fails("k has shape", k=good["k"][:, :1])
    fails("at least one of pos_key", pos_key=None, pos_query=None)
    fails("even 2P", pos_key=good["pos_key"][:, :3])
    fails("pos_key has .* rows and pos_query", pos_key=good["pos_key"][:, :2])
    fails("share one dtype", v=good["v"].astype(np.float16))
    fails("mask must be int32", mask=good["mask"].astype(np.int64))
    fails("exceeds the relative-position table", rel_table=good["rel_table"][4:-4])
    fails("takes float32, float16, bfloat16", q=good["q"].astype(np.float64), k=good["k"].astype(np.float64))


def test_flash_spec_entry():
    op = spec.DISENTANGLED_FLASH_ATTENTION
    assert (op.op_type, op.plugin_namespace, op.plugin_version, op.domain) == (
        "DisentangledFlashAttention", "debertrt", "1", "debertrt")
    assert op.input_names(has_c2p=1, has_p2c=0) == ["q", "k", "v", "pos_key", "mask", "rel_table"]
    assert op.input_names(has_c2p=0, has_p2c=1) == ["q", "k", "v", "pos_query", "mask", "rel_table"]
    assert set(op.tolerances) == set(op.io_dtypes)
    attrs = spec.flash_node_attributes(0.125, 1.0, 1.0, True, False, 0, 128)
    assert attrs == {"plugin_namespace": "debertrt", "plugin_version": "1", "q_scale": 0.125, "k_scale": 1.0,
                     "pos_scale": 1.0, "has_c2p": 1, "has_p2c": 0, "position_buckets": 0,
                     "max_relative_positions": 128}
    with pytest.raises(ValueError, match="at least one"):
        spec.flash_node_attributes(1.0, 1.0, 1.0, False, False, 0, 128)
    with pytest.raises(ValueError, match="max_relative_positions must be >= 1"):
        spec.flash_node_attributes(1.0, 1.0, 1.0, True, True, 0, 0)
    with pytest.raises(ValueError, match="finite"):
        spec.flash_node_attributes(float("nan"), 1.0, 1.0, True, True, 0, 8)
    # the gather op keeps its public names
    assert (spec.OP_TYPE, spec.FIELD_NAMES) == ("DisentangledAttention", (
        "position_buckets", "max_relative_positions", "pos_scale", "has_c2p", "has_p2c"))


def test_interpreter_matrix_covers_both_tile_paths_and_odd_tables():
    """The CPU matrix reaches the kernel's window and constant tiles for every model table, and its
    odd tables are what they claim: jumps of more than one slot, and not monotone."""
    seen = {}
    for case in (c for c in check.interpret_cases() if c.block_m):
        table = check.rel_table(case.table, case.seq + 3, np.random.default_rng(0))
        for kind, n in check.tile_kinds(case, table).items():
            seen[(case.table, kind)] = seen.get((case.table, kind), 0) + n
    for table in check.INTERPRET_TABLES:
        assert seen[(table, "window")] > 0 and seen[(table, "constant")] > 0, (table, seen)
    jumpy = check.rel_table("jumpy", 100, np.random.default_rng(0))
    assert np.diff(jumpy).max() > 1 and (np.diff(jumpy) >= 0).all()
    assert (np.diff(check.rel_table("random", 70, np.random.default_rng(0))) < 0).any()
