"""The rewrite's checks by measurement: the original graph's index, span, scale and shape
values, evaluated with ONNX Runtime at a short and a long sequence, must be what the config
and the emitted bucket table say, or the layer is refused with its name."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from debertrt.core.errors import DebertrtError, first_line
from debertrt.core.resources import release_memory

from .model_facts import ModelFacts
from .patterns import LayerMatch, constant_value, scale_on_scores

SHORT_PROBE = 5          # sequence lengths at which the graph's index/span/scale are measured
LONG_PROBE_CAP = 1024
SCALE_RTOL = 1e-5


class Probe:
    """Evaluate chosen tensors of the *original* graph with ONNX Runtime at two sequence lengths."""

    def __init__(self, onnx_path: Path, facts: ModelFacts, max_sequence: int | None = None, model=None):
        self.onnx_path = onnx_path
        self.model = model  # the graph at onnx_path, already loaded with its weights (else read from disk)
        self.facts = facts
        long = min(max_sequence or facts.max_position_embeddings, LONG_PROBE_CAP)
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

    def run(self, layers: list[LayerMatch], extra: dict | None = None) -> "Probe":
        """Evaluate what ``layers`` need at every probe length, and ``extra`` (sequence length ->
        tensors) at the lengths it names (a length outside ``sequences`` is evaluated, not listed)."""
        import onnx

        extra = {s: _unique(t for t in ts if constant_value(t) is None) for s, ts in (extra or {}).items()}
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
        from debertrt.core import onnx_utils as ox

        if self.model is not None:
            base = ox.without_initializers(self.model)  # the weights are streamed to the session's file
        else:
            base = onnx.load(str(self.onnx_path), load_external_data=False)
        for sequence in sorted(set(self.sequences) | set(extra)):
            wanted = short_only if sequence == self.sequences[0] else everywhere if sequence in self.sequences else []
            names = [t.name for t in _unique(wanted + extra.get(sequence, []))]
            if not names:
                self.values[sequence] = {}
                continue
            # one session per length, of what that length's tensors depend on: the long probe's index
            # arithmetic needs no weights and none of the S×S activations of the whole graph
            pruned = pruned_for(base, names, self.model)
            model = pruned if pruned is not None else _with_outputs(base, names)
            weights = None if pruned is not None and not pruned.graph.initializer else self.model
            session = probe_session(model, self.onnx_path.parent, weights)
            try:
                values = session.run(names, _probe_feed(session, sequence))
            except Exception as exc:
                raise DebertrtError(f"cannot evaluate {self.onnx_path} at sequence length {sequence} with ONNX "
                                    f"Runtime to check the attention pattern: {first_line(exc)}") from exc
            self.values[sequence] = dict(zip(names, values))
            del session
            release_memory()  # the session's weights go back to the system before the next step
        return self


def pruned_for(model, outputs: list[str], weights=None):
    """``model`` cut down to the nodes ``outputs`` depend on, with those as its only outputs (ONNX Runtime
    runs every node of a graph, asked for or not); the initializers it reads from ``weights`` (default:
    ``model``'s), large ones as weight stubs of ``weights``. None when a node it needs holds a subgraph,
    whose reads of the outer graph this walk does not follow."""
    import onnx

    from debertrt.core import onnx_utils as ox

    nodes = list(model.graph.node)
    producer = {out: k for k, node in enumerate(nodes) for out in node.output if out}
    keep, seen, stack = set(), set(), list(outputs)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        k = producer.get(name)
        if k is None or k in keep:
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in nodes[k].attribute):
            return None
        keep.add(k)
        stack.extend(i for i in nodes[k].input if i)
    pruned = ox.without_initializers(model)
    graph = pruned.graph
    del graph.node[:], graph.input[:], graph.output[:]
    graph.node.extend(nodes[k] for k in sorted(keep))
    graph.input.extend(i for i in model.graph.input if i.name in seen)
    graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs)
    source = weights if weights is not None else model
    graph.initializer.extend(ox.weight_stub(i) if weights is not None and ox.is_large_weight(i) else i
                             for i in source.graph.initializer if i.name in seen)
    return pruned


def _with_outputs(model, names: list[str]):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    return copy


def _unique(tensors):
    seen, out = set(), []
    for t in tensors:
        if t.name not in seen:
            seen.add(t.name)
            out.append(t)
    return out


def probe_session(model, base_dir: Path, weights=None):
    """A session of ``model``, with the initializers of ``weights`` when it has none of its own, else
    with the data of its weight stubs from ``weights``; it runs once, unoptimised (measured values
    must be the graph's own)."""
    import onnxruntime as ort

    from debertrt.plugins.ort import one_shot_options, ort_session, session_for_model

    options = one_shot_options(prepack=False)  # one run: prepacking the weights would only cost time
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if weights is None:
        return ort_session(model, base_dir, options=options)
    return session_for_model(model, base_dir, options, weights=weights)


_NP_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
             "tensor(bool)": np.bool_}


def _probe_feed(session, sequence: int) -> dict:
    feed = {}
    for inp in session.get_inputs():
        dtype = _NP_TYPES.get(inp.type)
        if dtype is None or len(inp.shape) not in (2, 3):
            raise DebertrtError(f"cannot make a probe input for {inp.name!r} ({inp.type}, shape {inp.shape}): "
                                f"rewrite expects [batch, sequence] or [batch, choices, sequence] token inputs")
        fill = 1 if inp.name in ("attention_mask", "input_ids") else 0
        feed[inp.name] = np.full((1,) * (len(inp.shape) - 1) + (sequence,), fill, dtype=dtype)
    return feed


# ---------------------------------------------------------------------------- checking


def scalar(value, what: str, where: str) -> float:
    value = np.asarray(value)
    if value.size != 1:
        raise DebertrtError(f"{where}: {what} is not a scalar (shape {value.shape})")
    return float(value.reshape(()))


def check_layer(layer: LayerMatch, probe: Probe, facts: ModelFacts, table: np.ndarray) -> dict:
    """Verify one layer against the table and config; classify its terms; return its report entry."""
    spans = {}
    for term in layer.terms:
        term.kind = check_index(term, layer.label, probe, facts, table, spans)
        check_shapes(term, layer, probe, facts)
    kinds = sorted(t.kind for t in layer.terms)
    if kinds != sorted(facts.pos_att_type):
        raise DebertrtError(f"{layer.label}: the layer's positional terms are {kinds} but pos_att_type is "
                            f"{list(facts.pos_att_type)}")
    pos_scale, sources = check_positional_scale(layer, probe, facts)
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
        "scale": {"c2c": measure_c2c_scale(layer, probe, facts),
                  "positional": [{"term": t.kind, "ops": [op for op, _ in t.factors]} for t in layer.terms],
                  "source": sorted(set(sources)) or ["none (pre-scaled)"],
                  "config": facts.scale},
        "pos_scale": pos_scale,
    }


def check_index(term, where: str, probe: Probe, facts: ModelFacts, table: np.ndarray, spans: dict) -> str:
    """The term's span and gather index at each probed length against the config and ``table``;
    returns "c2p" or "p2c" (which sign of the relative position the index uses)."""
    smax = (table.size + 1) // 2
    kinds = set()
    for sequence in probe.sequences:
        span = int(scalar(probe.value(term.index.span, sequence), f"the span {term.index.span.name!r}", where))
        expected_span = facts.span_at(sequence)
        if span != expected_span:
            rule = f"min(S, {facts.max_relative_positions}) = " if facts.static_span is None else ""
            raise DebertrtError(f"{where}: the graph's attention span at S={sequence} is {span} "
                                f"({term.index.span.name!r}) but the config says {rule}{expected_span}")
        spans.setdefault(sequence, set()).add(span)
        delta = np.asarray(probe.value(term.index.delta, sequence))
        if delta.size % (sequence * sequence) or delta.ndim < 2 or delta.shape[-2:] != (sequence, sequence):
            raise DebertrtError(f"{where}: the index {term.index.delta.name!r} of {term.gather.name!r} has shape "
                                f"{delta.shape} at S={sequence}; expected [..., {sequence}, {sequence}]")
        rel = table[np.arange(sequence)[:, None] - np.arange(sequence)[None, :] + smax - 1].astype(np.int64)
        grid = delta.reshape(-1, sequence, sequence)
        matched = [kind for kind, sign in (("c2p", 1), ("p2c", -1))
                   if np.array_equal(grid, np.broadcast_to(np.clip(sign * rel + span, 0, 2 * span - 1), grid.shape))]
        if not matched:
            bad = int(np.count_nonzero(grid != np.clip(rel + span, 0, 2 * span - 1)))
            raise DebertrtError(
                f"{where}: the index of {term.gather.name!r} is not clamp(±bucket(i-j) + span, 0, 2*span-1) for "
                f"position_buckets={facts.position_buckets}, max_relative_positions="
                f"{facts.max_relative_positions} at S={sequence} ({bad} of {delta.size} entries differ from "
                f"the c2p form); the config and the graph disagree")
        if sequence > 1:  # at S = 1 both forms agree
            kinds.add(matched[0])
    if len(kinds) != 1:
        raise DebertrtError(f"{where}: cannot tell whether {term.gather.name!r} is c2p or p2c")
    kind = kinds.pop()
    if term.transposed != (kind == "p2c"):
        raise DebertrtError(f"{where}: {term.gather.name!r} gathers the {kind} way but its result is "
                            f"{'' if term.transposed else 'not '}transposed before the sum")
    return kind


def check_shapes(term, layer: LayerMatch, probe: Probe, facts: ModelFacts) -> None:
    """At the short probe: the positional scores are 2·span wide, the gathered term has c2c's shape,
    and the gather runs along the last axis."""
    where, short = layer.label, probe.sequences[0]
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
    if scores is not None and axis % scores.ndim != scores.ndim - 1:
        raise DebertrtError(f"{where}: {term.gather.name!r} gathers along axis {axis}, not the last one")


def check_positional_scale(layer: LayerMatch, probe: Probe, facts: ModelFacts) -> tuple[float, list[str]]:
    """The product of the scalar Div/Mul after each gather: equal for both terms, constant over
    lengths, and what the config gives (1 for v1, 1/sqrt(head_size·(1 + #pos types)) for v2/v3)."""
    where = layer.label
    factors, sources = [], []
    for term in layer.terms:
        factor = 1.0
        for op, tensor in term.factors:
            values = {round(scalar(probe.value(tensor, s), f"the {op} operand {tensor.name!r}", where), 12)
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
    return pos_scale, sources


def measure_c2c_scale(layer: LayerMatch, probe: Probe, facts: ModelFacts) -> dict | None:
    """Where and how c2c is scaled (for the report; the plugin leaves c2c as the graph computes it)."""
    found = scale_on_scores(layer.c2c)
    if not found:
        return None
    side, op, tensor = found
    try:
        value = scalar(probe.value(tensor, probe.sequences[0]), "the c2c scale", layer.label)
    except (KeyError, DebertrtError):
        return {"on": side, "op": op, "value": None}
    value = value if op == "Div" else 1.0 / value
    return {"on": side, "op": op, "value": value, "source": "constant" if probe.is_constant(tensor) else "evaluated",
            "matches_config": math.isclose(value, facts.scale, rel_tol=SCALE_RTOL)}
