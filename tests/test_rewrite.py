"""The plugin rewrite: every preset x head x exporter, the index table against transformers,
single-kind configs, refusal of unrecognisable graphs, liveness of the positional path, the
CLI, and the ONNX Runtime op (PyOp) behind plugin graphs."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from debertrt.compiler.cli import main
from debertrt.core import onnx_utils as ox
from debertrt.core.artifacts import read_json
from debertrt.core.compare import output_errors
from debertrt.core.errors import DebertrtError
from debertrt.core.data import random_batch
from debertrt.core.models import PRESETS, load_model, preset_config, tasks_for
from debertrt.compiler.rewrite import ModelFacts, relative_position_table, rewrite
from debertrt.runtime.runners import OnnxRuntimeRunner, TorchRunner
from debertrt.plugins import spec
from debertrt.plugins.ort import ort_session
from debertrt.plugins.reference import delta_index, disentangled_attention
from fixtures import attention_graphs

EXPORTERS = ("torchscript", "dynamo")
SEQUENCES = (1, 7, 64, 65, 300)  # 300 > tiny-deberta's max_relative_positions (128)
SHORT_SWEEP = (7, 300)
# One head per preset runs every length (a different head each, so all five heads get the
# full sweep somewhere across exporters); the others run SHORT_SWEEP to keep the suite short.
FULL_SWEEP = {("tiny-deberta", "torchscript"): "base", ("tiny-deberta", "dynamo"): "token-classification",
              ("tiny-deberta-v2", "torchscript"): "masked-lm", ("tiny-deberta-v2", "dynamo"): "question-answering",
              ("tiny-deberta-v3", "torchscript"): "sequence-classification", ("tiny-deberta-v3", "dynamo"): "base"}


def plugin_nodes(model):
    return [n for n in model.graph.node if n.op_type == spec.OP_TYPE]


def check_plugin_graph(path, ref):
    model = onnx.load(str(path))
    nodes = plugin_nodes(model)
    assert len(nodes) == ref.config.num_hidden_layers
    assert not [n for n in model.graph.node if n.op_type == "GatherElements"]
    assert {o.domain: o.version for o in model.opset_import}.get(spec.DOMAIN) == 1
    kinds = list(ref.config.pos_att_type)
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert node.domain == spec.DOMAIN
        assert attrs["plugin_namespace"] == b"debertrt" and attrs["plugin_version"] == b"1"
        assert (attrs["has_c2p"], attrs["has_p2c"]) == ("c2p" in kinds, "p2c" in kinds)
        assert len(node.input) == 2 + len(kinds)
        table = {t.name: t for t in model.graph.initializer}[node.input[-1]]
        assert table.data_type == TensorProto.INT32
        assert list(table.dims) == [2 * ref.config.max_position_embeddings - 1]
    return model


def compare(ref, onnx_path, plugin_path, sequences, seed=0):
    rng = np.random.default_rng(seed)
    worst = {"vs_onnx": 0.0, "vs_torch": 0.0}
    with TorchRunner(ref) as torch_runner, OnnxRuntimeRunner(onnx_path) as plain, \
            OnnxRuntimeRunner(plugin_path) as plugin:
        for sequence in sequences:
            feed = random_batch(ref, 3, sequence, rng)
            expected, original, got = torch_runner.infer(feed), plain.infer(feed), plugin.infer(feed)
            for name in ref.output_names:
                assert got[name].shape == original[name].shape
                vs_onnx = float(np.abs(got[name] - original[name]).max())  # every position, pads included
                vs_torch = output_errors(expected[name], got[name], feed["attention_mask"])["max_abs"]
                assert vs_onnx <= 1e-5, (name, sequence, vs_onnx)
                assert vs_torch <= 1e-4, (name, sequence, vs_torch)
                worst["vs_onnx"] = max(worst["vs_onnx"], vs_onnx)
                worst["vs_torch"] = max(worst["vs_torch"], vs_torch)
    return worst


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("preset, task", [(p, t) for p in PRESETS for t in tasks_for(PRESETS[p]["model_type"])])
def test_rewrite_matches_onnx_and_pytorch(exported, tmp_path, preset, task, exporter):
    onnx_path = exported(preset, task, exporter)
    ref = load_model(preset, task)
    out = rewrite(onnx_path, tmp_path / "model.plugin.onnx").path
    assert out == tmp_path / "model.plugin.onnx"
    plugin_model = check_plugin_graph(out, ref)
    # the exporter's module scopes survive: int8's fallback groups the same MatMuls into the same layers
    kept = {n.name for n in plugin_model.graph.node}
    plain_scopes = {n: s for n, s in ox.node_scopes(onnx.load(str(onnx_path))).items() if n in kept}
    plugin_scopes = ox.node_scopes(plugin_model)
    assert plain_scopes and {n: plugin_scopes.get(n) for n in plain_scopes} == plain_scopes

    report = read_json(tmp_path / "model.plugin.rewrite.json")
    assert report["nodes"]["added"] == ref.config.num_hidden_layers
    assert report["op_counts"]["before"]["GatherElements"] == 2 * ref.config.num_hidden_layers
    assert "GatherElements" not in report["op_counts"]["after"]
    assert [layer["layer"] for layer in report["layers"]] == [f"layer.{i}" for i in range(ref.config.num_hidden_layers)]
    first = report["layers"][0]
    if preset == "tiny-deberta":
        assert first["span"]["source"] == "dynamic" and first["pos_scale"] == 1.0
        assert first["scale"]["c2c"]["on"] == "q"
    else:
        assert first["span"]["source"] == "static"
        assert first["pos_scale"] == pytest.approx(1 / np.sqrt(8 * 3), rel=1e-6)
        assert first["scale"]["c2c"]["on"] == "k"
    assert first["scale"]["c2c"]["matches_config"] is True
    stage = read_json(tmp_path / "manifest.json")["stages"]["rewrite"]
    assert stage["outputs"]["model"]["path"] == "model.plugin.onnx"

    sequences = SEQUENCES if FULL_SWEEP[(preset, exporter)] == task else SHORT_SWEEP
    compare(ref, onnx_path, out, sequences)


# ------------------------------------------------------------------ the index table vs transformers


def hf_indices(facts: ModelFacts, sequence: int):
    """HF's own c2p index clamp(rel + span) and p2c index clamp(-rel + span) (transposed, as used)."""
    import torch

    layer = torch.zeros(1, sequence, 8)
    if facts.model_type == "deberta":
        from transformers.models.deberta.modeling_deberta import build_relative_position

        rel = build_relative_position(layer, layer)[0]
        span = min(sequence, facts.max_relative_positions)
    else:
        from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

        rel = build_relative_position(layer, layer, bucket_size=facts.position_buckets or -1,
                                      max_position=facts.max_relative_positions)[0]
        span = facts.static_span
    c2p = torch.clamp(rel + span, 0, 2 * span - 1).numpy()
    p2c = torch.clamp(-rel + span, 0, 2 * span - 1).numpy().T  # gathered then transposed
    return span, c2p, p2c


INDEX_CONFIGS = [
    ("tiny-deberta", {}),
    ("tiny-deberta", {"max_relative_positions": 7}),
    ("tiny-deberta-v2", {}),
    ("tiny-deberta-v2", {"max_relative_positions": -1}),  # falls back to max_position_embeddings
    ("tiny-deberta-v3", {}),
    ("tiny-deberta-v3", {"position_buckets": 64, "max_relative_positions": 300}),
    ("tiny-deberta-v3", {"position_buckets": 32, "max_relative_positions": 512}),
    ("tiny-deberta-v3", {"position_buckets": 128, "max_relative_positions": 128}),
]


@pytest.mark.parametrize("preset,overrides", INDEX_CONFIGS)
def test_index_table_matches_transformers(preset, overrides):
    facts = ModelFacts.from_config(preset_config(preset, **overrides))
    table = relative_position_table(facts)  # what the rewrite puts in the graph
    smax = facts.max_position_embeddings
    assert table.dtype == np.int32 and table.shape == (2 * smax - 1,)
    assert np.array_equal(table, -table[::-1])  # odd: p2c can share the delta
    for sequence in (1, 2, 7, 64, 65, 129, 300, smax):
        span, c2p, p2c = hf_indices(facts, sequence)
        delta = delta_index(sequence, sequence, span, table)
        assert np.array_equal(delta, c2p), sequence
        assert np.array_equal(delta, p2c), sequence


# ------------------------------------------------------------------ single-kind and other configs


VARIANTS = [
    ("tiny-deberta", {"pos_att_type": ["c2p"]}, "torchscript"),
    ("tiny-deberta", {"pos_att_type": ["p2c"]}, "dynamo"),
    ("tiny-deberta-v2", {"pos_att_type": ["p2c"]}, "torchscript"),
    ("tiny-deberta-v2", {"pos_att_type": ["c2p"]}, "dynamo"),
    ("tiny-deberta-v3", {"pos_att_type": ["c2p"]}, "torchscript"),
    ("tiny-deberta-v3", {"pos_att_type": ["p2c"]}, "torchscript"),
    ("tiny-deberta-v3", {"position_buckets": 64, "max_relative_positions": 300}, "torchscript"),
    ("tiny-deberta-v3", {"position_buckets": 64, "max_relative_positions": 300}, "dynamo"),
]


@pytest.mark.parametrize("preset,overrides,exporter", VARIANTS)
def test_other_configs_rewrite_and_match(exported, tmp_path, preset, overrides, exporter):
    onnx_path = exported(preset, "base", exporter, overrides)
    ref = load_model(preset, "base", config_overrides=overrides)
    out = rewrite(onnx_path, tmp_path / "model.plugin.onnx").path
    check_plugin_graph(out, ref)
    report = read_json(tmp_path / "model.plugin.rewrite.json")
    kinds = list(ref.config.pos_att_type)
    assert all(sorted(layer["gathers"]) == sorted(kinds) for layer in report["layers"])
    if preset != "tiny-deberta":
        assert report["layers"][0]["pos_scale"] == pytest.approx(1 / np.sqrt(8 * (1 + len(kinds))), rel=1e-6)
    compare(ref, onnx_path, out, (1, 7, 65, 300))


# ------------------------------------------------------------------ small graphs: what is and is not the pattern


@pytest.mark.parametrize("sequence", [1, 7, 64])
def test_a_small_attention_graph_rewrites_exactly(tmp_path, sequence):
    """The graph fixture (tests/fixtures/attention_graphs.py) as the exporters write it: the plugin
    graph equals the original at every position, pads and an all-pad row included."""
    path = attention_graphs.build(tmp_path)
    result = rewrite(path)
    assert result.summary["layers"] == 2 and result.summary["nodes"]["added"] == 2
    rng = np.random.default_rng(sequence)
    ids = rng.integers(1, attention_graphs.VOCAB, size=(3, sequence))
    mask = np.ones_like(ids)
    mask[1, sequence // 2 + 1:] = 0
    mask[2] = 0
    feed = {"input_ids": ids, "attention_mask": mask}
    with OnnxRuntimeRunner(path) as plain, OnnxRuntimeRunner(result.path) as plugin:
        want, got = plain.infer(feed)["last_hidden_state"], plugin.infer(feed)["last_hidden_state"]
    assert np.isfinite(got).all() and np.abs(want - got).max() <= 1e-6


@pytest.mark.parametrize("fuse, defect, message", [
    ("gathers", "abs-on-index", r"layer\.1\b.*unrecognised.*Abs"),
    ("gathers", "clamp-short", r"layer\.1\b.*GatherElements.*is not clamp.*S=64"),  # only long sequences reach it
    ("gathers", "span-off-by-one", r"layer\.0\b.*span at S=5 is 7.*config says 8"),
    ("gathers", "unscaled", r"layer\.1\b.*scales the positional terms by 1 .*gives 0\.204"),
    ("gathers", "swapped", r"layer\.1\b.*gathers the p2c way but its result is not transposed"),
    ("attention", "unscaled", r"layer\.1\b.*scales the positional terms by 1 "),
    ("attention", "c2c-unscaled", r"layer\.1\b.*scales q·kᵀ by 1 on q and 1 on k.*gives 1 on q and 0\.204"),
    ("attention", "swapped", r"layer\.1\b.*gathers the p2c way"),
    ("attention", "unmasked", r"layer\.1\b.*unrecognised attention block.*flow into Softmax"),
])
def test_a_planted_defect_is_refused_naming_the_layer(tmp_path, fuse, defect, message):
    path = attention_graphs.build(tmp_path, defect=defect)
    with pytest.raises(DebertrtError, match=message) as error:
        rewrite(path, fuse=fuse)
    assert "\n" not in str(error.value)
    written = "model.plugin*" if fuse == "gathers" else "model.flash*"
    assert not list(tmp_path.glob(written))


def test_missing_layers_are_counted(tmp_path):
    """A config that claims more layers than the graph has: the count check refuses it."""
    path = attention_graphs.build(tmp_path)
    with pytest.raises(DebertrtError, match=r"2 layers.*has 3.*layer\.2"):
        rewrite(path, tmp_path / "model.plugin.onnx", config=attention_graphs.config(layers=3))


def test_a_model_without_manifest_is_refused(tmp_path):
    path = attention_graphs.build(tmp_path / "with")
    shutil.copy(path, tmp_path / "model.onnx")
    with pytest.raises(DebertrtError, match="manifest"):
        rewrite(tmp_path / "model.onnx")


# ------------------------------------------------------------------ the positional path is live


@pytest.mark.parametrize("preset", list(PRESETS))
def test_rolling_the_rel_table_changes_the_outputs(exported, tmp_path, preset):
    onnx_path = exported(preset, "base", "torchscript")
    ref = load_model(preset, "base")
    plugin = onnx.load(str(rewrite(onnx_path, tmp_path / "model.plugin.onnx").path))
    for init in plugin.graph.initializer:
        if init.name.startswith("debertrt.rel_table"):
            init.CopyFrom(numpy_helper.from_array(np.roll(numpy_helper.to_array(init), 3), init.name))
    onnx.save(plugin, str(tmp_path / "rolled.onnx"))
    feed = random_batch(ref, 2, 64, np.random.default_rng(0))
    with OnnxRuntimeRunner(tmp_path / "model.plugin.onnx") as good, OnnxRuntimeRunner(tmp_path / "rolled.onnx") as bad:
        diff = float(np.abs(good.infer(feed)["last_hidden_state"] - bad.infer(feed)["last_hidden_state"]).max())
    assert diff > 1e-3


# ------------------------------------------------------------------ CLI


def test_cli_rewrite_then_parity(exported, tmp_path, capsys):
    onnx_path = exported("tiny-deberta-v2", "sequence-classification", "dynamo")
    shutil.copy(onnx_path, tmp_path / "model.onnx")
    shutil.copy(onnx_path.parent / "manifest.json", tmp_path / "manifest.json")
    assert main(["rewrite", str(tmp_path / "model.onnx")]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'model.plugin.onnx'}" in printed and "2 DisentangledAttention nodes" in printed
    assert (tmp_path / "model.plugin.rewrite.json").is_file()
    assert "rewrite" in read_json(tmp_path / "manifest.json")["stages"]

    assert main(["parity", "--model", "tiny-deberta-v2", "--task", "sequence-classification",
                 "--artifact", str(tmp_path / "model.plugin.onnx"), "--out", str(tmp_path / "parity"),
                 "--batches", "2", "--batch-size", "3", "--max-length", "40"]) == 0
    result = read_json(tmp_path / "parity.json")
    assert result["passed"] and result["artifacts"][0]["status"] == "ran"
    assert "model.plugin.onnx" in (tmp_path / "parity.md").read_text()


def test_cli_rewrite_error_is_one_line(tmp_path, capsys):
    assert main(["rewrite", str(tmp_path / "absent.onnx")]) == 1
    assert capsys.readouterr().err.strip().count("\n") == 0


# ------------------------------------------------------------------ the ONNX Runtime op


def one_node_graph(path, dtype, kinds=("c2p", "p2c"), smax=16, pos_scale=0.5):
    elem = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}[dtype]
    names = ["c2c"] + list(kinds)
    inputs = [helper.make_tensor_value_info(n, elem, ["b", "s", "w" if n != "c2c" else "s2"]) for n in names]
    table = relative_position_table(ModelFacts("deberta-v2", 1, tuple(kinds), 4, 12, smax, 8))
    attrs = spec.node_attributes(4, 12, pos_scale, "c2p" in kinds, "p2c" in kinds)
    node = helper.make_node(spec.OP_TYPE, names + ["rel_table"], ["out"], name="attn", domain=spec.DOMAIN, **attrs)
    graph = helper.make_graph([node], "one", inputs, [helper.make_tensor_value_info("out", elem, None)],
                              initializer=[numpy_helper.from_array(table, "rel_table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(spec.DOMAIN, 1)])
    onnx.save(model, str(path))
    return table


@pytest.mark.parametrize("kinds", [("c2p", "p2c"), ("c2p",), ("p2c",)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_ort_session_runs_the_reference_op(tmp_path, dtype, kinds):
    table = one_node_graph(tmp_path / "one.onnx", dtype, kinds)
    rng = np.random.default_rng(0)
    sequence, span = 11, 4
    feed = {"c2c": rng.standard_normal((3, sequence, sequence)).astype(dtype)}
    for kind in kinds:
        feed[kind] = rng.standard_normal((3, sequence, 2 * span)).astype(dtype)
    expected = disentangled_attention(feed["c2c"], feed.get("c2p"), feed.get("p2c"), table, 0.5)
    for _ in range(3):  # registration is once per process; sessions can be made again and again
        session = ort_session(tmp_path / "one.onnx")
        (got,) = session.run(None, feed)
        assert got.dtype == dtype
        assert np.array_equal(got, expected)


def test_ort_op_errors_raise_instead_of_aborting(tmp_path):
    one_node_graph(tmp_path / "one.onnx", np.float32, smax=8)
    session = ort_session(tmp_path / "one.onnx")
    rng = np.random.default_rng(0)
    feed = {"c2c": rng.standard_normal((1, 10, 10)).astype(np.float32),  # 10 > the table's 8
            "c2p": rng.standard_normal((1, 10, 8)).astype(np.float32),
            "p2c": rng.standard_normal((1, 10, 8)).astype(np.float32)}
    with pytest.raises(DebertrtError, match="exceeds the relative-position table"):
        session.run(None, feed)
    feed = {k: v[:, :6, :6] if k == "c2c" else v[:, :6] for k, v in feed.items()}
    assert np.isfinite(session.run(None, feed)[0]).all()  # the session is still usable


def test_external_data_in_external_data_out(tmp_path):
    from debertrt.compiler.export import ExportOptions, export

    ref = load_model("tiny-deberta-v2", "masked-lm")
    onnx_path = export(ref, tmp_path, ExportOptions(exporter="torchscript", external_data=True, validate=False))
    out = rewrite(onnx_path).path
    assert out == tmp_path / "model.plugin.onnx"
    data = tmp_path / "model.plugin.onnx.data"
    assert data.is_file() and out.stat().st_size < data.stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or session leftovers
    check_plugin_graph(out, ref)
    compare(ref, onnx_path, out, (7, 65))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
