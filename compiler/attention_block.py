"""The whole attention of one layer around its disentangled scores, for the fused rewrite.

``patterns.LayerMatch`` finds each layer's score sum (c2c + gathered c2p/p2c terms); this
module extends it to everything the fused node replaces, again by what the nodes compute::

    q ─ [T] [Div/Mul s] ──────────┐                      (v1 scales q, v2/v3 scale kᵀ)
    k ─ [T] [Div/Mul s] ── MatMul (c2c) ─ Add(terms) ─ [Reshape] ─ Where/Add(mask) ─ [Reshape] ─ Softmax
    q ─ MatMul(·, pos_kᵀ) (c2p scores)  pos_kᵀ: weights only (reaches the inputs through Shape only)
    k ─ MatMul(·, pos_qᵀ) (p2c scores)  pos_qᵀ: weights only
    Softmax ─ [Reshape] ─ MatMul(·, v) ─ [Reshape/Transpose]* ─ context [B, S, H·D]

q, k and v are the tensors left after stripping transposes of the last two axes, scalar
Div/Mul and Casts from the c2c MatMul's inputs (and Casts from the value MatMul's); the
mask is the graph input that the masking node reads. Layout, scale values and positional
tables are not assumed here: ``debertrt.compiler.fuse`` measures them and confirms the
rewritten graph against the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .patterns import LayerMatch, PatternError, swaps_last_two, constant_value, producer

PASS_THROUGH = ("Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze")
CONTEXT_LAYOUT = PASS_THROUGH + ("Transpose",)
SHAPE_READERS = ("Shape", "Size")


@dataclass
class Operand:
    """A tensor the fused node reads, as the graph uses it: transposed or not, with scalar factors."""

    tensor: object
    transposed: bool = False                     # the graph uses it with its last two axes swapped
    factors: list = field(default_factory=list)  # [(op, scalar tensor)] for Div / Mul


@dataclass
class AttentionBlock:
    layer: LayerMatch
    query: Operand            # q·kᵀ's left side
    key: Operand              # q·kᵀ's right side (the graph uses kᵀ: transposed is True)
    value: object
    positional: dict          # gather name -> the weights-only operand of its term's score MatMul ([.., D, 2P])
    masking: object           # the node that masks the scores
    mask_input: object        # the graph input the masking reads
    softmax: object
    context_matmul: object
    context: object           # the [B, S, H·D] tensor the output projection reads
    nodes: list = field(default_factory=list)  # the S×S path: none may be left after the rewrite

    @property
    def label(self) -> str:
        return self.layer.label

    def probed(self) -> list:
        """Tensors whose values the fused rewrite measures at the short probe length."""
        factors = [t for _, t in self.query.factors + self.key.factors]
        return [self.query.tensor, self.key.tensor, self.value, self.context, self.softmax.inputs[0]] + factors


class WeightsOnly:
    """Memoised: is a tensor fixed by the weights (it reaches graph inputs only through Shape/Size)?"""

    def __init__(self):
        self._memo: dict[int, bool] = {}

    def __call__(self, tensor) -> bool:
        key = id(tensor)
        if key not in self._memo:
            self._memo[key] = True  # cycle guard
            node = producer(tensor)
            if node is None:
                self._memo[key] = constant_value(tensor) is not None
            elif node.op not in SHAPE_READERS:
                self._memo[key] = all(self(t) for t in node.inputs if t is not None and t.name)
        return self._memo[key]


def graph_inputs_reached(tensor) -> list:
    """The graph inputs ``tensor`` depends on other than through Shape/Size."""
    found, seen, stack = [], set(), [tensor]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        node = producer(t)
        if node is None:
            if constant_value(t) is None and t not in found:
                found.append(t)
        elif node.op not in SHAPE_READERS:
            stack.extend(i for i in node.inputs if i is not None and i.name)
    return found


def strip_operand(tensor, static) -> Operand:
    """Walk back from a MatMul input through Identity/Cast, last-two-axes transposes and scalar Div/Mul."""
    operand = Operand(tensor)
    while True:
        node = producer(operand.tensor)
        if node is None:
            return operand
        if node.op in ("Identity", "Cast"):
            operand.tensor = node.inputs[0]
        elif node.op == "Transpose" and swaps_last_two(node.attrs.get("perm")):
            operand.transposed = not operand.transposed
            operand.tensor = node.inputs[0]
        elif node.op == "Div" and len(node.inputs) == 2 and static(node.inputs[1]) and not static(node.inputs[0]):
            operand.factors.append(("Div", node.inputs[1]))
            operand.tensor = node.inputs[0]
        elif node.op == "Mul" and len(node.inputs) == 2 and static(node.inputs[0]) != static(node.inputs[1]):
            data, scalar = node.inputs if static(node.inputs[1]) else node.inputs[::-1]
            operand.factors.append(("Mul", scalar))
            operand.tensor = data
        else:
            return operand


def _next(tensor, where: str, what: str):
    """The one node reading ``tensor`` (Shape/Size readers aside)."""
    users = [u for u in tensor.outputs if u.op not in SHAPE_READERS]
    if len(users) != 1:
        names = ", ".join(f"{u.op} {u.name!r}" for u in users) or "nothing"
        raise PatternError(where, f"{what} {tensor.name!r} is read by {names}; expected one path to the softmax "
                                  f"and the value product")
    return users[0]


def _pass(tensor, where: str, what: str, ops=PASS_THROUGH):
    """Follow ``tensor`` through single-reader ``ops``; return (last tensor, the node reading it)."""
    node = _next(tensor, where, what)
    while node.op in ops:
        tensor = node.outputs[0]
        node = _next(tensor, where, what)
    return tensor, node


def match_block(layer: LayerMatch, static: WeightsOnly | None = None) -> AttentionBlock:
    """The attention block around ``layer``'s score sum; ``PatternError`` naming the layer otherwise."""
    static = static or WeightsOnly()
    where = layer.label
    c2c_matmul = producer(layer.c2c)
    query = strip_operand(c2c_matmul.inputs[0], static)
    key = strip_operand(c2c_matmul.inputs[1], static)

    positional, score_matmuls = {}, []
    for term in layer.terms:
        matmul = producer(term.scores)
        if matmul is None or matmul.op != "MatMul" or len(matmul.inputs) != 2:
            raise PatternError(where, f"the positional scores {term.scores.name!r} of {term.gather.name!r} do not "
                                      f"come from a MatMul of a content tensor and projected positions")
        if not static(matmul.inputs[1]) or static(matmul.inputs[0]):
            raise PatternError(where, f"{matmul.name!r} does not multiply run-time content by positions fixed by "
                                      f"the weights ({matmul.inputs[1].name!r} depends on the inputs)")
        positional[term.gather.name] = matmul.inputs[1]
        score_matmuls.append(matmul)

    scores, node = _pass(layer.root.outputs[0], where, "the score sum")
    masking = None
    if node.op == "Where" and len(node.inputs) == 3 and any(i is scores for i in node.inputs[1:]):
        fill = [i for i in node.inputs[1:] if i is not scores]
        if len(fill) != 1 or not static(fill[0]):
            raise PatternError(where, f"the masking Where {node.name!r} does not fill with a constant")
        masking, mask_operand = node, node.inputs[0]
    elif node.op == "Add" and len(node.inputs) == 2:
        masking, mask_operand = node, node.inputs[1] if node.inputs[0] is scores else node.inputs[0]
    else:
        raise PatternError(where, f"the attention scores flow into {node.op} {node.name!r}; expected the mask "
                                  f"(Where or Add) before the softmax")
    masked, softmax = _pass(masking.outputs[0], where, "the masked scores")
    if softmax.op != "Softmax":
        raise PatternError(where, f"the masked scores flow into {softmax.op} {softmax.name!r}, not a Softmax")
    inputs = graph_inputs_reached(mask_operand)
    if len(inputs) != 1:
        names = ", ".join(repr(t.name) for t in inputs) or "no graph input"
        raise PatternError(where, f"the mask of {masking.name!r} comes from {names}; expected one attention-mask input")

    probs, context_matmul = _pass(softmax.outputs[0], where, "the attention probabilities")
    if context_matmul.op != "MatMul" or context_matmul.inputs[0] is not probs:
        raise PatternError(where, f"the attention probabilities flow into {context_matmul.op} "
                                  f"{context_matmul.name!r}; expected MatMul(probabilities, v)")
    value = strip_operand(context_matmul.inputs[1], static)
    if value.transposed or value.factors:
        raise PatternError(where, f"v {value.tensor.name!r} is transposed or scaled before the value product")
    context, _ = _pass(context_matmul.outputs[0], where, "the attention context", CONTEXT_LAYOUT)

    nodes = [c2c_matmul, *score_matmuls, *(t.gather for t in layer.terms), masking, softmax, context_matmul]
    return AttentionBlock(layer, query, key, value.tensor, positional, masking, inputs[0], softmax, context_matmul,
                          context, nodes)


def find_blocks(layers: list[LayerMatch]) -> list[AttentionBlock]:
    static = WeightsOnly()
    return [match_block(layer, static) for layer in layers]


def positional_table(value: np.ndarray, heads: int, head_size: int, rows: int, where: str, what: str) -> np.ndarray:
    """[H, 2P, D] float32 from the evaluated operand ``[..., D, 2P]`` of a positional score MatMul
    (per head, or one shared by every head)."""
    from debertrt.core.errors import DebertrtError

    value = np.asarray(value, dtype=np.float32)
    if value.ndim < 2 or value.shape[-2:] != (head_size, rows):
        raise DebertrtError(f"{where}: the {what} positions are {value.shape}; expected [..., head size {head_size}, "
                            f"2P = {rows}]")
    flat = value.reshape(-1, head_size, rows)
    if flat.shape[0] == 1:
        flat = np.broadcast_to(flat, (heads, head_size, rows))
    if flat.shape[0] != heads:
        raise DebertrtError(f"{where}: the {what} positions hold {flat.shape[0]} blocks of [{head_size}, {rows}]; "
                            f"expected one per head ({heads}) or one for all")
    return np.ascontiguousarray(flat.swapaxes(-1, -2))
