"""The DisentangledAttention NumPy reference against transformers, and the C++ creator against the spec.

- ``reference.disentangled_attention`` equals transformers-style torch gathers (``torch.gather``
  + ``clamp`` + ``transpose`` on transformers' own ``build_relative_position``), for linear and
  log tables, c2p/p2c alone or together, several S including 1;
- ``reference.relative_position_table`` equals transformers' ``build_relative_position`` for
  v2/v3 (log buckets, max_relative_positions == and != 2 * position_buckets) and v1 (linear);
- the README matches ``plugins/spec.py`` (the C++ creators are checked through what the plugin
  self-test prints, in ``tests/test_plugin_kernel_build.py``);
- the GPU check's pieces that need no GPU (``kernel_check``): its float64 torch reference, the
  transformers-style eager gathers it times, the byte floor, the case matrix, and its exit when
  no GPU is present.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
deberta_v2 = pytest.importorskip("transformers.models.deberta_v2.modeling_deberta_v2")
deberta_v1 = pytest.importorskip("transformers.models.deberta.modeling_deberta")

from debertrt.plugins import kernel_cases, kernel_check, reference, spec  # noqa: E402

PLUGIN_DIR = Path(reference.__file__).resolve().parent / "disentangled_attention"
TABLES = {"linear": (0, 512), "log": (256, 512)}
PRESENCE = {"both": (True, True), "c2p": (True, False), "p2c": (False, True)}


def _dummy(s: int) -> "torch.Tensor":
    return torch.zeros(1, s, 1)


def hf_relative_pos(s: int, position_buckets: int, max_relative_positions: int) -> "torch.Tensor":
    """transformers' own relative positions [1, S, S] (v2/v3 code path; buckets <= 0 -> linear)."""
    q = _dummy(s)
    return deberta_v2.build_relative_position(q, q, bucket_size=position_buckets, max_position=max_relative_positions)


def hf_style(c2c, c2p, p2c, relative_pos, span: int, pos_scale: float):
    """The DeBERTa v2 ``disentangled_attention_bias`` gathers, on precomputed c2p/p2c scores [B*H, S, 2*span]."""
    score = torch.zeros_like(c2c)
    if c2p is not None:
        c2p_pos = torch.clamp(relative_pos + span, 0, span * 2 - 1)
        c2p_att = torch.gather(c2p, dim=-1,
                               index=c2p_pos.squeeze(0).expand([c2c.size(0), c2c.size(1), relative_pos.size(-1)]))
        score += c2p_att * pos_scale
    if p2c is not None:
        r_pos = relative_pos  # query length == key length
        p2c_pos = torch.clamp(-r_pos + span, 0, span * 2 - 1)
        p2c_att = torch.gather(p2c, dim=-1, index=p2c_pos.squeeze(0).expand([c2c.size(0), c2c.size(-1), c2c.size(-1)]))
        score += p2c_att.transpose(-1, -2) * pos_scale
    return c2c + score


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize("presence", sorted(PRESENCE))
@pytest.mark.parametrize("s", [1, 7, 64, 65, 300])
def test_reference_matches_transformers_gathers(table, presence, s):
    buckets, max_rel = TABLES[table]
    span = buckets if buckets > 0 else min(s, max_rel)  # v2/v3: position_buckets; v1: min(S, max_rel)
    has_c2p, has_p2c = PRESENCE[presence]
    rows = 3
    rng = np.random.default_rng(s * 7 + len(presence) + len(table))
    c2c = rng.standard_normal((rows, s, s), dtype=np.float32)
    c2p = rng.standard_normal((rows, s, 2 * span), dtype=np.float32) if has_c2p else None
    p2c = rng.standard_normal((rows, s, 2 * span), dtype=np.float32) if has_p2c else None
    pos_scale = 0.37
    smax = 512  # a table longer than S: the reference offsets by Smax - 1
    rel_table = reference.relative_position_table(buckets, max_rel, smax)

    ours = reference.disentangled_attention(c2c, c2p, p2c, rel_table, pos_scale)
    as_t = (lambda a: None if a is None else torch.from_numpy(a))
    theirs = hf_style(as_t(c2c), as_t(c2p), as_t(p2c), hf_relative_pos(s, buckets, max_rel), span, pos_scale).numpy()
    assert ours.dtype == np.float32 and ours.shape == c2c.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_reference_keeps_io_dtype_and_leading_dims():
    rel_table = reference.relative_position_table(256, 512, 16)
    rng = np.random.default_rng(0)
    c2c = rng.standard_normal((2, 3, 5, 5)).astype(np.float16)
    c2p = rng.standard_normal((2, 3, 5, 512)).astype(np.float16)
    out = reference.disentangled_attention(c2c, c2p, None, rel_table, 0.5)
    assert out.dtype == np.float16 and out.shape == c2c.shape


@pytest.mark.parametrize("buckets,max_rel", [(256, 512), (256, 1024), (256, 300), (128, 512), (64, 100), (32, 32)])
@pytest.mark.parametrize("s", [1, 7, 300, 1024])
def test_relative_position_table_matches_v2_log_buckets(buckets, max_rel, s):
    table = reference.relative_position_table(buckets, max_rel, s)
    assert table.dtype == np.int32 and table.shape == (2 * s - 1,)
    rel = hf_relative_pos(s, buckets, max_rel)[0].numpy()
    i, j = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    np.testing.assert_array_equal(table[i - j + s - 1], rel)
    # A longer table (Smax > S) indexes the same values at offset Smax - 1.
    longer = reference.relative_position_table(buckets, max_rel, s + 37)
    np.testing.assert_array_equal(longer[i - j + s + 36], rel)


@pytest.mark.parametrize("s", [1, 7, 300])
def test_relative_position_table_matches_v1_linear(s):
    q = _dummy(s)
    rel = deberta_v1.build_relative_position(q, q)[0].numpy()
    table = reference.relative_position_table(0, 512, s)
    i, j = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    np.testing.assert_array_equal(table[i - j + s - 1], rel)
    # v2 code path with position_buckets <= 0 is linear too.
    np.testing.assert_array_equal(table[i - j + s - 1], hf_relative_pos(s, -1, -1)[0].numpy())


def test_log_buckets_are_odd():
    """p2c reuses delta(i, j) because bucket(-r) == -bucket(r) (spec note)."""
    table = reference.relative_position_table(256, 512, 2048)
    np.testing.assert_array_equal(table, -table[::-1])


# ---- the README and the spec agree (the C++ creators: tests/test_plugin_kernel_build.py, via the self-test) ----


def test_readme_states_the_spec():
    readme = (PLUGIN_DIR / "README.md").read_text()
    for text in (spec.OP_TYPE, f'"{spec.PLUGIN_NAMESPACE}"', f'"{spec.PLUGIN_VERSION}"', *spec.FIELD_NAMES):
        assert text in readme, f"README.md does not mention {text}"


# ---- kernel_check pieces that run on CPU ------------------------------------------------------------


@pytest.mark.parametrize("presence", sorted(PRESENCE))
@pytest.mark.parametrize("sq,sk", [(1, 1), (9, 9), (65, 33), (33, 65)])
def test_kernel_check_torch_reference_matches_numpy(presence, sq, sk):
    has_c2p, has_p2c = PRESENCE[presence]
    span = 16
    rng = np.random.default_rng(sq * 100 + sk)
    c2c = rng.standard_normal((2, 3, sq, sk), dtype=np.float32)
    c2p = rng.standard_normal((2, 3, sq, 2 * span), dtype=np.float32) if has_c2p else None
    p2c = rng.standard_normal((2, 3, sk, 2 * span), dtype=np.float32) if has_p2c else None
    table = reference.relative_position_table(8, 64, 80)
    expected = reference.disentangled_attention(c2c, c2p, p2c, table, 0.25)
    as_t = (lambda a: None if a is None else torch.from_numpy(a))
    args = (as_t(c2c), as_t(c2p), as_t(p2c), torch.from_numpy(table), 0.25)
    got32 = kernel_cases.torch_reference(*args, compute_dtype=torch.float32, max_chunk=sq * sk)  # chunked path
    np.testing.assert_array_equal(got32.numpy(), expected)  # same float32 operations in the same order
    got64 = kernel_cases.torch_reference(*args)
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("presence", sorted(PRESENCE))
def test_kernel_check_eager_gathers_match_reference(presence):
    has_c2p, has_p2c = PRESENCE[presence]
    s, span = 70, 32
    table = reference.relative_position_table(32, 128, 100)
    rng = np.random.default_rng(5)
    c2c = rng.standard_normal((4, s, s), dtype=np.float32)
    c2p = rng.standard_normal((4, s, 2 * span), dtype=np.float32) if has_c2p else None
    p2c = rng.standard_normal((4, s, 2 * span), dtype=np.float32) if has_p2c else None
    expected = reference.disentangled_attention(c2c, c2p, p2c, table, 0.5)
    as_t = (lambda a: None if a is None else torch.from_numpy(a))
    rel = kernel_cases.hf_relative_pos(torch.from_numpy(table), s)
    np.testing.assert_array_equal(rel[0].numpy(), hf_relative_pos(s, 32, 128)[0].numpy())
    got = kernel_cases.hf_eager(as_t(c2c), as_t(c2p), as_t(p2c), rel, span, 0.5)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize("sq,sk,span", [(1, 1, 1), (7, 7, 4), (64, 64, 256), (65, 40, 8), (300, 300, 256)])
def test_byte_floor_counts_distinct_elements(table, sq, sk, span):
    rel_table = reference.relative_position_table(*TABLES[table], 512)
    c2p, p2c = kernel_cases.used_positional_elements(rel_table, sq, sk, span)
    delta = reference.delta_index(sq, sk, span, rel_table)
    assert c2p == sum(len(set(delta[i].tolist())) for i in range(sq))
    assert p2c == sum(len(set(delta[:, j].tolist())) for j in range(sk))
    floor = kernel_cases.byte_floor(3, sq, sk, rel_table, span, 2)
    assert floor == 3 * 2 * (2 * sq * sk + c2p + p2c)
    assert kernel_cases.byte_floor(3, sq, sk, rel_table, span, 2, has_p2c=False) == 3 * 2 * (2 * sq * sk + c2p)


def test_kernel_check_case_matrix_covers_the_brief():
    cases = kernel_cases.correctness_cases()
    square = [c for c in cases if c.sq == c.sk]
    assert {c.sq for c in square} == set(kernel_cases.SEQ_LENS)
    assert {c.rows for c in square} == set(kernel_cases.ROWS)
    assert {c.dtype for c in cases} == set(kernel_cases.TOLERANCES)
    assert {c.table for c in cases} == set(TABLES) and {c.presence for c in cases} == set(PRESENCE)
    assert any(c.sq != c.sk for c in cases)
    # Every (S, rows) pair runs, in every dtype where it is not the single 96 x 2048^2 case.
    for s in kernel_cases.SEQ_LENS:
        for rows in kernel_cases.ROWS:
            dtypes = {c.dtype for c in square if c.sq == s and c.rows == rows}
            assert dtypes, (s, rows)
            if rows * s * s < 96 * 2048 * 2048:
                assert dtypes == set(kernel_cases.TOLERANCES), (s, rows)
    # The big cases are few: at most one above 12 * 2048^2 elements.
    assert sum(c.numel > 12 * 2048 * 2048 for c in cases) == 1
    assert len(kernel_cases.correctness_cases(quick=True)) < len(cases)
    # Spans: log buckets use position_buckets, linear min(S, max_relative_positions) (v1).
    assert kernel_cases.Case(1, 2048, 2048, "linear", "both", "float16").span == 512
    assert kernel_cases.Case(1, 7, 7, "linear", "both", "float16").span == 7
    assert kernel_cases.Case(1, 7, 7, "log", "both", "float16").span == 256


def test_relative_error_flags_nan():
    ref = torch.ones(4, dtype=torch.float64)
    assert kernel_cases.relative_error(ref.clone(), ref) == 0.0
    bad = ref.clone()
    bad[2] = math.nan
    assert math.isnan(kernel_cases.relative_error(bad, ref))


def test_kernel_check_without_gpu_exits_2(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: this checks the no-GPU exit")
    assert kernel_check.main(["--json", str(tmp_path / "k.json"), "--skip-timing"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        kernel_check.parse_args(["--iters", "0"])
