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

import json
import math
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from debertrt.plugins.spec import DOMAIN, OP_TYPE

from .artifacts import MANIFEST, atomic_path, read_json, record_stage, sha256, sibling, write_json
from .errors import DebertrtError, InternalError, first_line
from .patterns import (LayerMatch, PatternError, constant_value, find_disentangled_attention,
                       node_scopes, scale_on_scores)

PLUGIN_SUFFIX = ".plugin.onnx"
REPORT_SUFFIX = ".rewrite.json"
SHORT_PROBE = 5          # sequence lengths at which the graph's index/span/scale are measured
LONG_PROBE_CAP = 1024
SCALE_RTOL = 1e-5
PROTOBUF_LIMIT = 2 * 1024**3


@dataclass(frozen=True)
class ModelFacts:
    """What the rewrite needs from the model config (from the export manifest)."""

    model_type: str
    num_layers: int
    pos_att_type: tuple
    position_buckets: int        # > 0: log buckets; 0: linear positions
    max_relative_positions: int  # resolved (< 1 in the config means max_position_embeddings)
    max_position_embeddings: int
    head_size: int

    @property
    def version(self) -> str:
        if self.model_type == "deberta":
            return "v1"
        return "v3" if self.position_buckets > 0 else "v2"

    @property
    def static_span(self) -> int | None:
        """The attention span of v2/v3 (static); None for v1, whose span is min(S, max_relative_positions)."""
        if self.model_type == "deberta":
            return None
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions

    def span_at(self, sequence: int) -> int:
        return self.static_span or min(sequence, self.max_relative_positions)

    @property
    def scale(self) -> float:
        """HF's scaled_size_sqrt: sqrt(head_size · (1 + number of positional terms))."""
        return float(np.sqrt(np.float32(self.head_size * (1 + len(self.pos_att_type)))))

    @classmethod
    def from_config(cls, config) -> "ModelFacts":
        model_type = config.model_type
        if model_type not in ("deberta", "deberta-v2"):
            raise DebertrtError(f"model_type {model_type!r} is not DeBERTa: nothing to rewrite")
        if not getattr(config, "relative_attention", False):
            raise DebertrtError("the model has relative_attention off: it has no disentangled attention to rewrite")
        kinds = tuple(k for k in ("c2p", "p2c") if k in (getattr(config, "pos_att_type", None) or []))
        if not kinds:
            raise DebertrtError("the model's pos_att_type has neither c2p nor p2c: nothing to rewrite")
        smax = int(config.max_position_embeddings)
        max_rel = int(getattr(config, "max_relative_positions", -1))
        if max_rel < 1:
            max_rel = smax
        buckets = int(getattr(config, "position_buckets", -1)) if model_type == "deberta-v2" else -1
        heads = int(config.num_attention_heads)
        head_size = int(config.hidden_size) // heads
        if model_type == "deberta-v2":
            head_size = int(getattr(config, "attention_head_size", head_size))
        return cls(model_type, int(config.num_hidden_layers), kinds, max(buckets, 0), max_rel, smax, head_size)

    @classmethod
    def from_manifest(cls, directory: str | os.PathLike) -> "ModelFacts":
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise DebertrtError(f"{path} not found: rewrite reads the model config from the export manifest; "
                                f"export with 'debertrt export' (or pass config= to rewrite())")
        try:
            entry = read_json(path)["stages"]["export"]
            config = dict(entry["config"])
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise DebertrtError(f"{path} has no export stage with a config: re-export the model") from exc
        return cls.from_config(config_from_dict(config))


def config_from_dict(config: dict):
    """A transformers config from a ``to_diff_dict`` (missing keys take transformers' defaults)."""
    from transformers import AutoConfig

    config = dict(config)
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise DebertrtError("the export manifest's config has no model_type: re-export the model")
    for key in ("transformers_version", "architectures"):
        config.pop(key, None)
    return AutoConfig.for_model(model_type, **config)


def plugin_path_for(onnx_path: str | os.PathLike) -> Path:
    """``DIR/model.onnx`` -> ``DIR/model.plugin.onnx``."""
    return sibling(onnx_path, PLUGIN_SUFFIX)


def report_path_for(out_path: str | os.PathLike) -> Path:
    """``DIR/model.plugin.onnx`` -> ``DIR/model.plugin.rewrite.json``."""
    return sibling(out_path, REPORT_SUFFIX)


def rewrite(onnx_path: str | os.PathLike, out_path: str | os.PathLike | None = None, config=None) -> Path:
    """Write ``DIR/model.plugin.onnx`` (one DisentangledAttention node per layer) and its report.

    ``config``: a transformers config or a config dict; by default read from the export
    stage of ``DIR/manifest.json``.
    """
    import onnx
    import onnx_graphsurgeon as gs

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise DebertrtError(f"ONNX model {str(onnx_path)!r} not found")
    out_path = Path(out_path) if out_path is not None else plugin_path_for(onnx_path)
    if out_path.resolve() == onnx_path.resolve():
        raise DebertrtError(f"--out {out_path} would overwrite the input; choose another path")
    if config is None:
        facts = ModelFacts.from_manifest(onnx_path.parent)
    else:
        facts = ModelFacts.from_config(config_from_dict(config) if isinstance(config, dict) else config)

    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(n.op_type == OP_TYPE for n in model.graph.node):
        raise DebertrtError(f"{onnx_path} already has DisentangledAttention nodes: give the plain export (model.onnx)")
    external = any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    if external:
        onnx.external_data_helper.load_external_data_for_model(model, str(onnx_path.parent))
    scopes = node_scopes(model)
    graph = gs.import_onnx(model)
    ops_before = Counter(n.op for n in graph.nodes)

    layers = match(graph, facts, scopes)
    probes = Probe(onnx_path, facts).run(layers)
    table = relative_position_table(facts)
    reports = [check_layer(layer, probes, facts, table) for layer in layers]
    nodes = replace_layers(graph, layers, reports, facts, table, scopes)

    ops_after = Counter(n.op for n in graph.nodes)
    if ops_after.get(OP_TYPE, 0) != facts.num_layers or ops_after.get("GatherElements", 0):
        raise InternalError(f"rewrite left {ops_after.get(OP_TYPE, 0)} plugin nodes and "
                            f"{ops_after.get('GatherElements', 0)} GatherElements for {facts.num_layers} layers")
    new_model = gs.export_onnx(graph)
    if not any(o.domain == DOMAIN for o in new_model.opset_import):
        new_model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    _save(new_model, out_path, external)

    report = {
        "input": str(onnx_path),
        "output": str(out_path),
        "model_version": facts.version,
        "num_hidden_layers": facts.num_layers,
        "pos_att_type": list(facts.pos_att_type),
        "rel_table": {"position_buckets": facts.position_buckets,
                      "max_relative_positions": facts.max_relative_positions,
                      "max_position_embeddings": facts.max_position_embeddings,
                      "length": int(table.size), "kind": "log" if facts.position_buckets > 0 else "linear"},
        "nodes": {"before": sum(ops_before.values()), "after": sum(ops_after.values()),
                  "added": len(nodes), "removed": sum(ops_before.values()) - (sum(ops_after.values()) - len(nodes))},
        "op_counts": {"before": dict(sorted(ops_before.items())), "after": dict(sorted(ops_after.items()))},
        "probe_sequences": list(probes.sequences),
        "layers": reports,
    }
    report_path = report_path_for(out_path)
    write_json(report_path, report)
    record_stage(out_path.parent, "rewrite", inputs={"model": str(onnx_path), "sha256": sha256(onnx_path)},
                 options={"out": str(out_path)},
                 outputs={"model": out_path, "report": report_path},
                 extra={"summary": summary(report), "model_version": facts.version,
                        "layers": len(reports), "nodes": report["nodes"]})
    return out_path


def summary(report: dict) -> str:
    first = report["layers"][0]
    return (f"{report['nodes']['added']} DisentangledAttention nodes ({report['model_version']}, "
            f"{'+'.join(report['pos_att_type'])}, {first['span']['rule']}, pos_scale {first['pos_scale']:.6g}); "
            f"{report['nodes']['before']} -> {report['nodes']['after']} nodes, "
            f"{report['nodes']['removed']} removed")


def relative_position_table(facts: ModelFacts) -> np.ndarray:
    from debertrt.plugins.reference import relative_position_table as table

    return table(facts.position_buckets, facts.max_relative_positions, facts.max_position_embeddings)


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


# ---------------------------------------------------------------------------- measuring


class Probe:
    """Evaluate chosen tensors of the *original* graph with ONNX Runtime at two sequence lengths."""

    def __init__(self, onnx_path: Path, facts: ModelFacts):
        self.onnx_path = onnx_path
        self.facts = facts
        long = min(facts.max_position_embeddings, LONG_PROBE_CAP)
        self.sequences = tuple(sorted({min(SHORT_PROBE, long), long}))
        self.values: dict[int, dict[str, np.ndarray]] = {}
        self.static: dict[str, np.ndarray] = {}

    def value(self, tensor, sequence: int) -> np.ndarray:
        const = constant_value(tensor)
        if const is not None:
            return const
        return self.values[sequence][tensor.name]

    def is_constant(self, tensor) -> bool:
        return constant_value(tensor) is not None

    def run(self, layers: list[LayerMatch]) -> "Probe":
        import onnx

        everywhere, short_only = [], []
        for layer in layers:
            for term in layer.terms:
                everywhere += [term.index.delta, term.index.span] + [t for _, t in term.factors]
                short_only += [term.scores, term.gather.outputs[0]]
            short_only.append(layer.c2c)
            found = scale_on_scores(layer.c2c)
            if found:
                short_only.append(found[2])
        everywhere = _unique(t for t in everywhere if constant_value(t) is None)
        short_only = _unique(t for t in short_only + everywhere if constant_value(t) is None)
        model = onnx.load(str(self.onnx_path), load_external_data=False)
        outputs = {o.name for o in model.graph.output}
        for t in short_only:
            if t.name not in outputs:
                model.graph.output.append(onnx.ValueInfoProto(name=t.name))
        session = _probe_session(model, self.onnx_path.parent)
        for sequence in self.sequences:
            wanted = short_only if sequence == self.sequences[0] else everywhere
            names = [t.name for t in wanted]
            try:
                values = session.run(names, _probe_feed(session, sequence)) if names else []
            except Exception as exc:
                raise DebertrtError(f"cannot evaluate {self.onnx_path} at sequence length {sequence} with ONNX "
                                    f"Runtime to check the attention pattern: {first_line(exc)}") from exc
            self.values[sequence] = dict(zip(names, values))
        return self


def _unique(tensors):
    seen, out = set(), []
    for t in tensors:
        if t.name not in seen:
            seen.add(t.name)
            out.append(t)
    return out


def _probe_session(model, base_dir: Path):
    import onnxruntime as ort

    from debertrt.plugins.ort import session_for_model

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return session_for_model(model, base_dir, options)


_NP_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
             "tensor(bool)": np.bool_}


def _probe_feed(session, sequence: int) -> dict:
    feed = {}
    for inp in session.get_inputs():
        dtype = _NP_TYPES.get(inp.type)
        if dtype is None or len(inp.shape) != 2:
            raise DebertrtError(f"cannot make a probe input for {inp.name!r} ({inp.type}, shape {inp.shape}): "
                                f"rewrite expects [batch, sequence] token inputs")
        fill = 1 if inp.name in ("attention_mask", "input_ids") else 0
        feed[inp.name] = np.full((1, sequence), fill, dtype=dtype)
    return feed


# ---------------------------------------------------------------------------- checking


def _scalar(value, what: str, where: str) -> float:
    value = np.asarray(value)
    if value.size != 1:
        raise DebertrtError(f"{where}: {what} is not a scalar (shape {value.shape})")
    return float(value.reshape(()))


def check_layer(layer: LayerMatch, probe: Probe, facts: ModelFacts, table: np.ndarray) -> dict:
    """Verify one layer against the table and config; classify its terms; return its report entry."""
    where = layer.label
    smax = facts.max_position_embeddings
    spans = {}
    for term in layer.terms:
        kinds = set()
        for sequence in probe.sequences:
            span = int(_scalar(probe.value(term.index.span, sequence), f"the span {term.index.span.name!r}", where))
            expected_span = facts.span_at(sequence)
            if span != expected_span:
                rule = (f"min(S, {facts.max_relative_positions})" if facts.static_span is None
                        else f"{facts.static_span}")
                raise DebertrtError(f"{where}: the graph's attention span at S={sequence} is {span} "
                                    f"({term.index.span.name!r}) but the config says {rule} = {expected_span}")
            spans.setdefault(sequence, set()).add(span)
            delta = np.asarray(probe.value(term.index.delta, sequence))
            if delta.size % (sequence * sequence) or delta.ndim < 2 or delta.shape[-2:] != (sequence, sequence):
                raise DebertrtError(f"{where}: the index {term.index.delta.name!r} of {term.gather.name!r} has shape "
                                    f"{delta.shape} at S={sequence}; expected [..., {sequence}, {sequence}]")
            rel = table[np.arange(sequence)[:, None] - np.arange(sequence)[None, :] + smax - 1].astype(np.int64)
            matched = [kind for kind, sign in (("c2p", 1), ("p2c", -1))
                       if np.array_equal(delta.reshape(-1, sequence, sequence),
                                         np.broadcast_to(np.clip(sign * rel + span, 0, 2 * span - 1),
                                                         (delta.size // sequence**2, sequence, sequence)))]
            if not matched:
                c2p = np.clip(rel + span, 0, 2 * span - 1)
                bad = int(np.count_nonzero(delta.reshape(-1, sequence, sequence) != c2p))
                raise DebertrtError(
                    f"{where}: the index of {term.gather.name!r} is not clamp(±bucket(i-j) + span, 0, 2*span-1) for "
                    f"position_buckets={facts.position_buckets}, max_relative_positions="
                    f"{facts.max_relative_positions} at S={sequence} ({bad} of {delta.size} entries differ from "
                    f"the c2p form); the config and the graph disagree")
            kinds.add(matched[0] if sequence > 1 else "?")
        kinds.discard("?")
        if len(kinds) != 1:
            raise DebertrtError(f"{where}: cannot tell whether {term.gather.name!r} is c2p or p2c")
        term.kind = kinds.pop()
        if term.transposed != (term.kind == "p2c"):
            raise DebertrtError(f"{where}: {term.gather.name!r} gathers the {term.kind} way but its result is "
                                f"{'' if term.transposed else 'not '}transposed before the sum")
        short = probe.sequences[0]
        scores = probe.values[short].get(term.scores.name)
        if scores is not None and scores.shape[-1] != 2 * facts.span_at(short):
            raise DebertrtError(f"{where}: the {term.kind} scores {term.scores.name!r} are {scores.shape[-1]} wide at "
                                f"S={short}; expected 2*span = {2 * facts.span_at(short)}")
        gathered = probe.values[short].get(term.gather.outputs[0].name)
        c2c = probe.values[short].get(layer.c2c.name)
        if gathered is not None and c2c is not None:
            shape = gathered.shape[:-2] + gathered.shape[-2:][::-1] if term.transposed else gathered.shape
            if tuple(shape) != tuple(c2c.shape):
                raise DebertrtError(f"{where}: the {term.kind} term ({tuple(shape)}) and the c2c scores "
                                    f"{layer.c2c.name!r} ({tuple(c2c.shape)}) do not have the same shape")
        axis = term.gather.attrs.get("axis", 0)
        rank = scores.ndim if scores is not None else None
        if rank is not None and axis % rank != rank - 1:
            raise DebertrtError(f"{where}: {term.gather.name!r} gathers along axis {axis}, not the last one")

    kinds = sorted(t.kind for t in layer.terms)
    if kinds != sorted(facts.pos_att_type):
        raise DebertrtError(f"{where}: the layer's positional terms are {kinds} but pos_att_type is "
                            f"{list(facts.pos_att_type)}")

    # The positional scale: product of the scalar Div/Mul after each gather, equal for both terms.
    factors, sources = [], []
    for term in layer.terms:
        factor = 1.0
        for op, tensor in term.factors:
            values = {round(_scalar(probe.value(tensor, s), f"the {op} operand {tensor.name!r}", where), 12)
                      for s in probe.sequences}
            if len(values) != 1:
                raise DebertrtError(f"{where}: the {term.kind} scale {tensor.name!r} changes with the sequence "
                                    f"length ({sorted(values)})")
            value = values.pop()
            factor = factor / value if op == "Div" else factor * value
            sources.append("constant" if probe.is_constant(tensor) else "evaluated")
        factors.append(factor)
    pos_scale = factors[0]
    if any(not math.isclose(f, pos_scale, rel_tol=SCALE_RTOL) for f in factors):
        raise DebertrtError(f"{where}: c2p and p2c are scaled differently ({factors}); one pos_scale cannot express it")
    expected = 1.0 if facts.model_type == "deberta" else 1.0 / facts.scale
    if not math.isclose(pos_scale, expected, rel_tol=SCALE_RTOL):
        raise DebertrtError(f"{where}: the graph scales the positional terms by {pos_scale:.8g} but the config "
                            f"(head size {facts.head_size}, {len(facts.pos_att_type)} positional terms) gives "
                            f"{expected:.8g}")

    c2c_scale = None
    found = scale_on_scores(layer.c2c)
    if found:
        side, op, tensor = found
        try:
            value = _scalar(probe.value(tensor, probe.sequences[0]), "the c2c scale", where)
            c2c_scale = {"on": side, "op": op, "value": value if op == "Div" else 1.0 / value,
                         "source": "constant" if probe.is_constant(tensor) else "evaluated",
                         "matches_config": math.isclose(value if op == "Div" else 1.0 / value, facts.scale,
                                                        rel_tol=SCALE_RTOL)}
        except (KeyError, DebertrtError):
            c2c_scale = {"on": side, "op": op, "value": None}

    static = all(probe.is_constant(t.index.span) for t in layer.terms)
    return {
        "layer": layer.label,
        "gathers": {t.kind: t.gather.name for t in layer.terms},
        "c2c": layer.c2c.name,
        "sum": layer.root.name,
        "adds_removed": len(layer.adds),
        "span": {"source": "static" if static else "dynamic",
                 "rule": (f"span {facts.static_span}" if facts.static_span is not None
                          else f"span min(S, {facts.max_relative_positions})"),
                 "measured": {str(s): sorted(v)[0] for s, v in spans.items()}},
        "buckets": {"position_buckets": facts.position_buckets,
                    "max_relative_positions": facts.max_relative_positions,
                    "kind": "log" if facts.position_buckets > 0 else "linear"},
        "scale": {"c2c": c2c_scale,
                  "positional": [{"term": t.kind, "ops": [op for op, _ in t.factors]} for t in layer.terms],
                  "source": sorted(set(sources)) or ["none (pre-scaled)"],
                  "config": facts.scale},
        "pos_scale": pos_scale,
    }


# ---------------------------------------------------------------------------- rewriting


def replace_layers(graph, layers: list[LayerMatch], reports: list[dict], facts: ModelFacts, table: np.ndarray,
                   scopes: dict[str, str] | None = None):
    """Insert one plugin node per layer in place of its root Add; ``cleanup().toposort()`` drops the rest."""
    import onnx_graphsurgeon as gs

    from debertrt.plugins.spec import node_attributes

    rel_table = gs.Constant(f"debertrt.rel_table.b{facts.position_buckets}.m{facts.max_relative_positions}"
                            f".s{facts.max_position_embeddings}", np.ascontiguousarray(table, dtype=np.int32))
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


def _scope_of(name: str) -> str:
    return name.rsplit("/", 1)[0] if name.startswith("/") and "/" in name[1:] else ""


def _save(model, out_path: Path, external: bool) -> None:
    """Write atomically: the graph lands last, and never half-written."""
    import onnx

    external = external or model.ByteSize() > PROTOBUF_LIMIT // 2
    if not external:
        with atomic_path(out_path) as tmp:
            onnx.save_model(model, str(tmp))
        data = out_path.with_name(out_path.name + ".data")
        if data.exists():
            data.unlink()
        return
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    try:
        data_name = out_path.name + ".data"
        staged = staging / out_path.name
        onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        os.replace(staging / data_name, out_path.parent / data_name)
        os.replace(staged, out_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
