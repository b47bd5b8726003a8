"""``debertrt rewrite --fuse attention``: each layer's whole attention becomes one
DisentangledFlashAttention node (contract: ``debertrt.plugins.spec``); no S×S tensor is left::

    q, k ─ c2c MatMul ─┐
    c2p/p2c gathers ───┴─ Add ─ mask ─ Softmax ─ MatMul(·, v) ─ [B, S, H·D]
      becomes   DisentangledFlashAttention(q, k, v, pos_key, pos_query, mask, rel_table) ─ [B, S, H·D]
                (pos_key, pos_query: initializers; mask: the attention-mask input as int32)

The block is matched by ``attention_block`` on top of the gather rewrite's match and checks
(index, span, positional scale: ``rewrite_checks``). Then, by measurement on the original
graph: q, k, v and the context have the layouts the op takes ([B·H, S, D] gets a Reshape to
[B, H, S, D]), the c2c scale sits where the model version puts it with the config's value,
and the positional keys/queries, which depend only on weights, are evaluated and folded to
``[H, 2P, D]`` initializers (v1 at a length where its span is the whole table, P =
max_relative_positions: the op's clamp then selects what HF's slice selects at every S).
Last, the rewritten graph is confirmed against the original on padding extremes (full,
right-, left-padded and all-padding rows) at a short and a long length: every layer's
context must agree on non-padding rows (``CONFIRM_ATOL``) and every output must be finite.
"""

from __future__ import annotations

import math

import numpy as np

from debertrt.core.errors import DebertrtError
from debertrt.plugins.spec import DOMAIN, FLASH_OP_TYPE, flash_node_attributes

from .attention_block import AttentionBlock, WeightsOnly, find_blocks, positional_table, strip_operand
from .model_facts import ModelFacts
from .patterns import PatternError, producer
from .rewrite_checks import SCALE_RTOL, Probe, probe_session, scalar

CONFIRM_ATOL = 1e-4    # on max |fused - original| / max(1, |original|), layer contexts, non-padding rows
CONFIRM_SHORT = 7
CONFIRM_LONG = 65      # at least; v1 also past its span, so the positional clamp is exercised


def match_blocks(layers) -> list[AttentionBlock]:
    try:
        return find_blocks(layers)
    except PatternError as exc:
        raise DebertrtError(f"{exc.where}: unrecognised attention block for --fuse attention: {exc.message}") from exc


def positional_length(facts: ModelFacts, sequences) -> int:
    """Where the positional operands are evaluated: any length for a static span; for v1 one at
    which min(S, max_relative_positions) is the whole table."""
    if facts.static_span is not None:
        return sequences[0]
    return sequences[-1] if sequences[-1] >= facts.max_relative_positions else facts.max_relative_positions


def probe_plan(blocks: list[AttentionBlock], facts: ModelFacts, sequences) -> dict:
    """What ``Probe.run`` evaluates for the fused rewrite: sequence length -> tensors."""
    plan = {sequences[0]: [t for b in blocks for t in b.probed()]}
    plan.setdefault(positional_length(facts, sequences), []).extend(
        t for b in blocks for t in b.positional.values())
    return plan


# ---------------------------------------------------------------------------- checks by measurement


def _factor(factors, probe: Probe, sequence: int, where: str) -> float:
    value = 1.0
    for op, tensor in factors:
        x = scalar(probe.value(tensor, sequence), f"the {op} operand {tensor.name!r}", where)
        value = value / x if op == "Div" else value * x
    return value


def _layout(tensor, probe: Probe, sequence: int, facts: ModelFacts, transposed: bool, where: str, what: str) -> int:
    """The rank of q/k/v (4: [B, H, S, D]; 3: [B·H, S, D]) after checking its measured shape (batch 1)."""
    shape = tuple(np.shape(probe.value(tensor, sequence)))
    heads, size = facts.num_heads, facts.head_size
    last = (size, sequence) if transposed else (sequence, size)
    if shape in ((1, heads) + last, (heads,) + last):
        return len(shape)
    raise DebertrtError(f"{where}: {what} {tensor.name!r} has shape {shape} at batch 1, S={sequence}; expected "
                        f"[B, H={heads}, {'D, S' if transposed else 'S, D'}] or [B*H, ...] with head size {size}")


def check_block(block: AttentionBlock, probe: Probe, facts: ModelFacts) -> dict:
    """Layouts, the c2c scale and the softmax axis of one block at the short probe; what the node needs."""
    where, short = block.label, probe.sequences[0]
    kinds = {t.gather.name: t.kind for t in block.layer.terms}
    weights_only = WeightsOnly()
    for term in block.layer.terms:
        content = producer(term.scores).inputs[0]
        wanted = block.query if term.kind == "c2p" else block.key
        if strip_operand(content, weights_only).tensor is not wanted.tensor:
            raise DebertrtError(f"{where}: the {term.kind} scores multiply {content.name!r}, not the "
                                f"{'query' if term.kind == 'c2p' else 'key'} {wanted.tensor.name!r} of q·kᵀ")
    expected = facts.flash_scales
    q_factor = _factor(block.query.factors, probe, short, where)
    k_factor = _factor(block.key.factors, probe, short, where)
    if not (math.isclose(q_factor, expected["q_scale"], rel_tol=SCALE_RTOL)
            and math.isclose(k_factor, expected["k_scale"], rel_tol=SCALE_RTOL)):
        raise DebertrtError(f"{where}: the graph scales q·kᵀ by {q_factor:.8g} on q and {k_factor:.8g} on k, "
                            f"but the config (head size {facts.head_size}, {len(facts.pos_att_type)} positional terms, "
                            f"{facts.version}) gives {expected['q_scale']:.8g} on q and {expected['k_scale']:.8g} on k")
    ranks = {"q": _layout(block.query.tensor, probe, short, facts, block.query.transposed, where, "q"),
             "k": _layout(block.key.tensor, probe, short, facts, not block.key.transposed, where, "k"),
             "v": _layout(block.value, probe, short, facts, False, where, "v")}
    context = tuple(np.shape(probe.value(block.context, short)))
    if context != (1, short, facts.num_heads * facts.head_size):
        raise DebertrtError(f"{where}: the attention context {block.context.name!r} has shape {context} at batch 1, "
                            f"S={short}; expected [B, S, H*D = {facts.num_heads * facts.head_size}]")
    rank = np.ndim(probe.value(block.softmax.inputs[0], short))
    axis = int(block.softmax.attrs.get("axis", -1))
    if axis % rank != rank - 1:
        raise DebertrtError(f"{where}: the Softmax {block.softmax.name!r} runs over axis {axis}, not the keys")
    at = positional_length(facts, probe.sequences)
    tables = {kinds[name]: positional_table(probe.value(t, at), facts.num_heads, facts.head_size,
                                            facts.positional_rows, where, kinds[name])
              for name, t in block.positional.items()}
    return {"ranks": ranks, "tables": tables, "scales": expected,
            "measured": {"q": q_factor, "k": k_factor}, "positional_length": at}


# ---------------------------------------------------------------------------- the rewrite


class _Builder:
    def __init__(self, graph):
        self.graph = graph
        self.names = {n.name for n in graph.nodes} | set(graph.tensors())

    def name(self, base: str) -> str:
        while base in self.names:
            base += "_"
        self.names.add(base)
        return base

    def op(self, op: str, inputs, base: str, **attrs):
        import onnx_graphsurgeon as gs

        out = gs.Variable(self.name(f"{base}_output"))
        self.graph.nodes.append(gs.Node(op, name=self.name(base), inputs=list(inputs), outputs=[out], attrs=attrs))
        return out

    def heads(self, tensor, rank: int, transpose: bool, heads: int, base: str):
        """``tensor`` as [B, H, S, D]: the last two axes swapped back, [B·H, S, D] reshaped."""
        import onnx_graphsurgeon as gs

        if transpose:
            perm = list(range(rank))
            perm[-2:] = perm[-1], perm[-2]
            tensor = self.op("Transpose", [tensor], f"{base}/Transpose", perm=perm)
        if rank == 3:
            tail = self.op("Shape", [tensor], f"{base}/Shape", start=1)
            lead = gs.Constant(self.name(f"{base}/heads"), np.array([-1, heads], dtype=np.int64))
            shape = self.op("Concat", [lead, tail], f"{base}/Concat", axis=0)
            tensor = self.op("Reshape", [tensor, shape], f"{base}/Reshape")
        return tensor


def replace_blocks(graph, blocks: list[AttentionBlock], checks: list[dict], facts: ModelFacts, table: np.ndarray,
                   scopes: dict | None = None) -> list:
    """One fused node per block, writing the block's context tensor; ``cleanup().toposort()`` drops the rest."""
    import onnx
    import onnx_graphsurgeon as gs

    build = _Builder(graph)
    rel_table = gs.Constant(build.name(f"debertrt.rel_table.b{facts.position_buckets}.m{facts.max_relative_positions}"
                                       f".s{(table.size + 1) // 2}"), np.ascontiguousarray(table, dtype=np.int32))
    masks, nodes = {}, []
    for block, check in zip(blocks, checks):
        scope = (scopes or {}).get(block.softmax.name) or block.label
        base = f"{scope}/DisentangledFlashAttention"
        if id(block.mask_input) not in masks:  # [B, S] (or [B, C, S] flattened) nonzero -> int32, once per graph
            flat = build.op("Flatten", [block.mask_input], "debertrt.mask/Flatten", axis=-1)
            keep = build.op("Cast", [flat], "debertrt.mask/Cast_bool", to=onnx.TensorProto.BOOL)
            masks[id(block.mask_input)] = build.op("Cast", [keep], "debertrt.mask/Cast_int32",
                                                   to=onnx.TensorProto.INT32)
        ranks = check["ranks"]
        inputs = [build.heads(block.query.tensor, ranks["q"], block.query.transposed, facts.num_heads, f"{base}/q"),
                  build.heads(block.key.tensor, ranks["k"], not block.key.transposed, facts.num_heads, f"{base}/k"),
                  build.heads(block.value, ranks["v"], False, facts.num_heads, f"{base}/v")]
        for kind, label in (("c2p", "pos_key"), ("p2c", "pos_query")):
            if kind in check["tables"]:
                inputs.append(gs.Constant(build.name(f"{base}/{label}"), check["tables"][kind]))
        inputs += [masks[id(block.mask_input)], rel_table]
        attrs = flash_node_attributes(**check["scales"], has_c2p="c2p" in check["tables"],
                                      has_p2c="p2c" in check["tables"], position_buckets=facts.position_buckets,
                                      max_relative_positions=facts.max_relative_positions)
        producer(block.context).outputs.clear()
        node = gs.Node(FLASH_OP_TYPE, name=build.name(base), domain=DOMAIN, attrs=attrs, inputs=inputs,
                       outputs=[block.context])
        graph.nodes.append(node)
        nodes.append(node)
    graph.cleanup().toposort()
    alive = {id(n) for n in graph.nodes}
    for block in blocks:
        left = [n for n in block.nodes if id(n) in alive]
        if left:
            raise DebertrtError(f"{block.label}: the attention scores are still read after fusing ({left[0].op} "
                                f"{left[0].name!r}): the graph uses the S×S path elsewhere, so it cannot be fused")
    return nodes


# ---------------------------------------------------------------------------- confirmation


def confirm_lengths(facts: ModelFacts, sequences) -> tuple[int, ...]:
    longest = sequences[-1]
    long = min(longest, max(CONFIRM_LONG, facts.positional_rows // 2 + 5))
    return tuple(sorted({min(CONFIRM_SHORT, longest), long}))


def confirm(onnx_path, original_model, fused_model, blocks: list[AttentionBlock], facts: ModelFacts,
            sequences) -> dict:
    """Every layer's context of the fused graph against the original's (``original_model``, loaded from
    ``onnx_path`` with its weights) on padding extremes; raises naming the first layer that differs.
    Returns the lengths, rows and max abs error per layer."""
    import onnx

    from debertrt.core import onnx_utils as ox
    from debertrt.core.data import TokenSpace, padding_extremes
    from debertrt.plugins.ort import ort_session

    names = [b.context.name for b in blocks]
    original = ox.without_initializers(original_model)  # runs with original_model's weights, not a copy
    fused = onnx.ModelProto()
    fused.CopyFrom(fused_model)  # its weights are stubs (``rewrite.stub_weights``): a copy of the graph only
    for model in (original, fused):
        present = {o.name for o in model.graph.output}
        model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    plain = probe_session(original, onnx_path.parent, weights=original_model)
    graph_inputs = plain.get_inputs()
    space = TokenSpace(tuple(i.name for i in graph_inputs), max(facts.vocab_size, 2),
                       multiple_choice=any(len(i.shape) == 3 for i in graph_inputs))
    dtypes = {"tensor(int32)": np.int32, "tensor(float)": np.float32, "tensor(bool)": np.bool_}
    feeds = {}
    for sequence in confirm_lengths(facts, sequences):
        feed = padding_extremes(space, sequence)
        feeds[sequence] = {i.name: feed[i.name].astype(dtypes.get(i.type, np.int64)) for i in graph_inputs}
    wanted = {sequence: dict(zip(names, plain.run(names, feed))) for sequence, feed in feeds.items()}
    del plain  # one session's weights at a time
    flash = ort_session(fused, onnx_path.parent, weights=original_model)
    worst = {b.label: 0.0 for b in blocks}
    rows = 0
    for sequence, feed in feeds.items():
        keep = feed["attention_mask"].reshape(-1, sequence) != 0 if "attention_mask" in feed else None
        rows = int(np.prod(next(iter(feed.values())).shape[:-1]))
        outputs = [o.name for o in flash.get_outputs()]
        got = dict(zip(outputs, flash.run(outputs, feed)))
        want = wanted[sequence]
        for name, value in got.items():
            if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all():
                raise DebertrtError(f"the fused graph's {name!r} holds inf/NaN at S={sequence} (padding extremes): "
                                    f"the fused attention is not NaN-safe here")
        for block in blocks:
            a = want[block.context.name].reshape(-1, sequence, want[block.context.name].shape[-1])
            b = got[block.context.name].reshape(a.shape)
            rows_kept = keep if keep is not None else np.ones(a.shape[:2], dtype=bool)
            err = float(np.abs(a - b)[rows_kept].max(initial=0.0)) / max(1.0, float(np.abs(a).max(initial=0.0)))
            worst[block.label] = max(worst[block.label], err)
            if err > CONFIRM_ATOL:
                raise DebertrtError(f"{block.label}: the fused attention differs from the graph's by {err:.3g} "
                                    f"(> {CONFIRM_ATOL:g}) at S={sequence} on non-padding rows: the block matched "
                                    f"but computes something else; the layer cannot be fused")
    return {"sequences": list(confirm_lengths(facts, sequences)), "rows": rows, "atol": CONFIRM_ATOL,
            "max_abs": worst}
