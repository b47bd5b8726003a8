"""Stage 2: ``model.onnx`` -> ``model.plugin.onnx`` with one DisentangledAttention node per layer.

The pass replaces, in every attention layer, the relative-position index arithmetic, the
c2p/p2c GatherElements, their scale and the Adds that combine them with c2c by one plugin
node (contract: ``debertrt.plugins.spec``)::

      q·pos_kᵀ (c2p)     k·pos_qᵀ (p2c)      rel = bucket(i-j) ── Add(±rel, span) ── Clip(0, 2·span-1)
          │                  │                                          │ (Expand/Squeeze/...)
    GatherElements ◄─────────┼──────────────────────────────────────────┤
          │            GatherElements ◄─────────────────────────────────┘
          │                  │
     [Div scale]     Transpose(-1,-2) [Div scale]
          │                  │
          └──── Add ─────────┘        q·kᵀ (c2c, MatMul; scaled on q (v1) or on k (v2/v3))
                 │                      │
                 └──────── Add ─────────┘ ──► masked_fill / softmax ...

    becomes   DisentangledAttention(c2c, c2p, p2c, rel_table) ──► masked_fill / softmax ...

How it matches (``debertrt.compiler.patterns``): by meaning, never by link position or
graph order. Each GatherElements is a positional term; its index must be a clamp of
``±rel + span`` where ``rel`` reaches a Range; its output must reach the score sum through
only a last-two-axes transpose and scalar Div/Mul; terms are grouped by the Add tree in
which they meet one MatMul (c2c). Then the graph's own values are measured with ONNX
Runtime at a short and a long sequence: the clamp output must equal
``clamp(±table[i-j] + span, 0, 2·span-1)`` for the table this pass emits (which also
tells c2p (+) from p2c (−)), the span must be what the config says (``min(S, max_rel)``
for v1, static for v2/v3), the scores must be ``2·span`` wide, and the positional scale
(a Div after the gather in v2/v3, none in v1) becomes ``pos_scale``, cross-checked
against ``sqrt(head_size · (1 + #pos types))`` from the config. Exactly one node per
layer, no GatherElements left; anything else raises ``DebertrtError`` naming the layer.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from debertrt.plugins.spec import DOMAIN, OP_TYPE

from debertrt.core import onnx_utils as ox
from debertrt.core.artifacts import StageResult, record_stage, sha256, sibling, write_json
from debertrt.core.errors import DebertrtError, InternalError
from debertrt.core.resources import measured
from .model_facts import ModelFacts, config_from_dict
from .patterns import LayerMatch, PatternError, find_disentangled_attention
from .pipeline import FUSE_CHOICES
from .rewrite_checks import Probe, check_layer

PLUGIN_SUFFIX = ".plugin.onnx"
FLASH_SUFFIX = ".flash.onnx"
REPORT_SUFFIX = ".rewrite.json"


def plugin_path_for(onnx_path: str | os.PathLike, fuse: str = "gathers") -> Path:
    """``DIR/model.onnx`` -> ``DIR/model.plugin.onnx`` (``fuse="attention"``: ``DIR/model.flash.onnx``)."""
    return sibling(onnx_path, FLASH_SUFFIX if fuse == "attention" else PLUGIN_SUFFIX)


def report_path_for(out_path: str | os.PathLike) -> Path:
    """``DIR/model.plugin.onnx`` -> ``DIR/model.plugin.rewrite.json``."""
    return sibling(out_path, REPORT_SUFFIX)


@measured
def rewrite(onnx_path: str | os.PathLike, out_path: str | os.PathLike | None = None, config=None,
            max_sequence: int | None = None, fuse: str = "gathers") -> StageResult:
    """Write ``DIR/model.plugin.onnx`` (one DisentangledAttention node per layer) and its report;
    with ``fuse="attention"``, ``DIR/model.flash.onnx`` (one DisentangledFlashAttention node per
    layer, no S×S tensor left: ``debertrt.compiler.fuse``).

    ``config``: a transformers config or a config dict; by default read from the export
    stage of ``DIR/manifest.json``. ``max_sequence``: the longest sequence the plugin graph must
    take, which sizes its relative-position table (default ``max_position_embeddings``; a model
    with an absolute position table cannot go beyond it).
    """
    import onnx
    import onnx_graphsurgeon as gs

    from debertrt.plugins.spec import FLASH_OP_TYPE, OPS

    from . import fuse as fused

    if fuse not in FUSE_CHOICES:
        raise DebertrtError(f"--fuse {fuse!r}: choose one of {', '.join(FUSE_CHOICES)}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise DebertrtError(f"ONNX model {str(onnx_path)!r} not found")
    out_path = Path(out_path) if out_path is not None else plugin_path_for(onnx_path, fuse)
    if out_path.resolve() == onnx_path.resolve():
        raise DebertrtError(f"--out {out_path} would overwrite the input; choose another path")
    if config is None:
        facts = ModelFacts.from_manifest(onnx_path.parent)
    else:
        facts = ModelFacts.from_config(config_from_dict(config) if isinstance(config, dict) else config)

    model = ox.load(onnx_path, external_data=False)
    if any(n.op_type in OPS for n in model.graph.node):
        raise DebertrtError(f"{onnx_path} already has plugin nodes: give the plain export (model.onnx)")
    external = ox.uses_external_data(model)
    if external:
        onnx.external_data_helper.load_external_data_for_model(model, str(onnx_path.parent))
    scopes = ox.node_scopes(model)
    graph = gs.import_onnx(model)
    ops_before = Counter(n.op for n in graph.nodes)

    longest = facts.table_sequence(max_sequence)
    layers = match(graph, facts, scopes)
    blocks = fused.match_blocks(layers) if fuse == "attention" else []
    table = relative_position_table(facts, longest)
    probes = Probe(onnx_path, facts, longest, model)
    probes.run(layers, fused.probe_plan(blocks, facts, probes.sequences) if blocks else None)
    reports = [check_layer(layer, probes, facts, table) for layer in layers]
    if fuse == "attention":
        checks = [fused.check_block(block, probes, facts) for block in blocks]
        nodes = fused.replace_blocks(graph, blocks, checks, facts, table, scopes)
        for report, check, node in zip(reports, checks, nodes):
            report["fused"] = {"node": node.name, **check["scales"], "measured_c2c_scale": check["measured"],
                               "layouts": {k: "[B, H, S, D]" if r == 4 else "[B*H, S, D]"
                                           for k, r in check["ranks"].items()},
                               "positional_rows": facts.positional_rows,
                               "positional_evaluated_at": check["positional_length"]}
    else:
        nodes = replace_layers(graph, layers, reports, facts, table, scopes)

    op_type = FLASH_OP_TYPE if fuse == "attention" else OP_TYPE
    ops_after = Counter(n.op for n in graph.nodes)
    if ops_after.get(op_type, 0) != facts.num_layers or ops_after.get("GatherElements", 0):
        raise InternalError(f"rewrite left {ops_after.get(op_type, 0)} plugin nodes and "
                            f"{ops_after.get('GatherElements', 0)} GatherElements for {facts.num_layers} layers")
    stub_weights(graph)  # the new graph's weights are the loaded model's: exported as stubs, written from it
    new_model = gs.export_onnx(graph)
    _keep_node_metadata(model, new_model)
    if not any(o.domain == DOMAIN for o in new_model.opset_import):
        new_model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    confirmed = fused.confirm(onnx_path, model, new_model, blocks, facts, probes.sequences) if blocks else None
    ox.save(new_model, out_path, external=external or None, check=None, weights=model)

    report = {
        "input": str(onnx_path),
        "output": str(out_path),
        "model_version": facts.version,
        "num_hidden_layers": facts.num_layers,
        "pos_att_type": list(facts.pos_att_type),
        "rel_table": {"position_buckets": facts.position_buckets,
                      "max_relative_positions": facts.max_relative_positions,
                      "max_position_embeddings": facts.max_position_embeddings,
                      "max_sequence": longest, "length": int(table.size), "kind": "log" if facts.position_buckets > 0 else "linear"},
        "nodes": {"before": sum(ops_before.values()), "after": sum(ops_after.values()),
                  "added": len(nodes), "removed": sum(ops_before.values()) - (sum(ops_after.values()) - len(nodes))},
        "op_counts": {"before": dict(sorted(ops_before.items())), "after": dict(sorted(ops_after.items()))},
        "probe_sequences": list(probes.sequences),
        "fuse": fuse,
        "op_type": op_type,
        "layers": reports,
    }
    if confirmed is not None:
        report["confirmed"] = confirmed
    report_path = report_path_for(out_path)
    write_json(report_path, report)
    stage_summary = {"text": summary(report), "model_version": facts.version, "layers": len(reports),
                     "nodes": report["nodes"], "max_sequence": longest}
    record_stage(out_path.parent, "rewrite", inputs={"model": str(onnx_path), "sha256": sha256(onnx_path)},
                 options={"out": str(out_path), "max_sequence": longest, "fuse": fuse},
                 outputs={"model": out_path, "report": report_path},
                 extra={"summary": stage_summary})
    return StageResult(out_path, report_path, stage_summary)


def _keep_node_metadata(original, new_model) -> None:
    """onnx-graphsurgeon drops nodes' ``metadata_props`` (the exporter's module scopes): copy them back by
    node name, so that the plugin graph's nodes carry the plain graph's layers (int8 fallback groups)."""
    props = {n.name: n.metadata_props for n in original.graph.node if n.metadata_props}
    for node in new_model.graph.node:
        if node.name in props and not node.metadata_props:
            node.metadata_props.extend(props[node.name])


def summary(report: dict) -> str:
    first = report["layers"][0]
    fused = first.get("fused")
    scales = (f"q_scale {fused['q_scale']:.6g}, k_scale {fused['k_scale']:.6g}, pos_scale {fused['pos_scale']:.6g}"
              if fused else f"pos_scale {first['pos_scale']:.6g}")
    confirmed = report.get("confirmed")
    checked = (f"; confirmed against the original at S={confirmed['sequences']} (max error "
               f"{max(confirmed['max_abs'].values()):.2g})" if confirmed else "")
    return (f"{report['nodes']['added']} {report['op_type']} nodes ({report['model_version']}, "
            f"{'+'.join(report['pos_att_type'])}, {first['span']['rule']}, {scales}){checked}; "
            f"{report['nodes']['before']} -> {report['nodes']['after']} nodes, "
            f"{report['nodes']['removed']} removed; position table for S <= {report['rel_table']['max_sequence']}")


def relative_position_table(facts: ModelFacts, max_sequence: int | None = None) -> np.ndarray:
    """The bucket table the plugin nodes index, for sequences up to ``max_sequence`` (default
    ``max_position_embeddings``)."""
    from debertrt.plugins.reference import relative_position_table as table

    return table(facts.position_buckets, facts.max_relative_positions, max_sequence or facts.max_position_embeddings)


# ---------------------------------------------------------------------------- matching


def match(graph, facts: ModelFacts, scopes) -> list[LayerMatch]:
    """Structural match: one LayerMatch per attention layer, named, in layer order."""
    try:
        layers = find_disentangled_attention(graph, scopes)
    except PatternError as exc:
        raise DebertrtError(f"{exc.where}: unrecognised disentangled-attention pattern: {exc.message}") from exc
    expected_terms = len(facts.pos_att_type)
    for layer in layers:
        if len(layer.terms) != expected_terms:
            names = ", ".join(repr(t.gather.name) for t in layer.terms)
            raise DebertrtError(f"{layer.label}: found {len(layer.terms)} positional gathers ({names}) meeting "
                                f"c2c in {layer.root.name!r}; the config's pos_att_type {list(facts.pos_att_type)} "
                                f"means {expected_terms}")
    if len(layers) != facts.num_layers:
        found = sorted(l.label for l in layers)
        missing = [f"layer.{i}" for i in range(facts.num_layers) if f"layer.{i}" not in found]
        raise DebertrtError(f"found disentangled attention in {len(layers)} layers ({', '.join(found) or 'none'}) "
                            f"but the model has {facts.num_layers}"
                            + (f"; not recognised: {', '.join(missing)}" if missing else ""))
    return sorted(layers, key=_layer_order)


def _layer_order(layer: LayerMatch):
    label = layer.label
    return (0, int(label.split(".")[1]), "") if label.startswith("layer.") and label[6:].isdigit() else (1, 0, label)


# ---------------------------------------------------------------------------- rewriting


def replace_layers(graph, layers: list[LayerMatch], reports: list[dict], facts: ModelFacts, table: np.ndarray,
                   scopes: dict[str, str] | None = None):
    """Insert one plugin node per layer in place of its root Add; ``cleanup().toposort()`` drops the rest."""
    import onnx_graphsurgeon as gs

    from debertrt.plugins.spec import node_attributes

    rel_table = gs.Constant(f"debertrt.rel_table.b{facts.position_buckets}.m{facts.max_relative_positions}"
                            f".s{(table.size + 1) // 2}", np.ascontiguousarray(table, dtype=np.int32))
    names = {n.name for n in graph.nodes}
    nodes = []
    for layer, report in zip(layers, reports):
        terms = {t.kind: t for t in layer.terms}
        inputs = [layer.c2c] + [terms[k].scores for k in ("c2p", "p2c") if k in terms] + [rel_table]
        out = layer.root.outputs[0]
        layer.root.outputs.clear()
        scope = (scopes or {}).get(layer.root.name) or _scope_of(layer.root.name)
        name = f"{scope}/DisentangledAttention" if scope else f"{layer.label}/DisentangledAttention"
        while name in names:
            name += "_"
        names.add(name)
        attrs = node_attributes(position_buckets=facts.position_buckets,
                                max_relative_positions=facts.max_relative_positions,
                                pos_scale=report["pos_scale"], has_c2p="c2p" in terms, has_p2c="p2c" in terms)
        node = gs.Node(op=OP_TYPE, name=name, domain=DOMAIN, attrs=attrs, inputs=inputs, outputs=[out])
        graph.nodes.append(node)
        nodes.append(node)
        report["node"] = name
    graph.cleanup().toposort()
    return nodes


def stub_weights(graph) -> None:
    """Swap each weight that ``graph`` still reads from the loaded model for a ``weight_stub``: exporting
    then copies no weights (``onnx_graphsurgeon`` copies every initializer twice, into the graph and then
    into the model); they are written from the loaded model (``onnx_utils.initializers_with``)."""
    from onnx_graphsurgeon.ir.tensor import LazyValues

    for tensor in graph.tensors().values():
        values = getattr(tensor, "_values", None)  # ``values`` itself would load the array
        if isinstance(values, LazyValues) and values.tensor.name == tensor.name and ox.is_large_weight(values.tensor):
            tensor.values = LazyValues(ox.weight_stub(values.tensor))


def _scope_of(name: str) -> str:
    return name.rsplit("/", 1)[0] if name.startswith("/") and "/" in name[1:] else ""
