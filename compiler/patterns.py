"""Recognising DeBERTa's disentangled attention in an exported graph, by what the nodes compute.

Every exporter spells the same computation differently (torchscript: Cast/Unsqueeze
chains and shape arithmetic; dynamo: symbolic Min/Range/Sub; one or the other may fold
constants), so nothing here walks fixed link chains or pairs nodes by graph order. The
anchors are what the HF code means:

* each **GatherElements** over the last axis is one positional term (c2p or p2c);
* its **index** is, up to pure broadcasting (Expand/Squeeze/Unsqueeze/Reshape/Cast),
  ``clamp(±rel + span, 0, 2·span − 1)`` where ``rel`` is the relative-position subgraph
  (it reaches a ``Range``) and ``span`` is the other operand of the Add (or Sub);
* its **output** reaches the score sum through at most a transpose of the last two axes
  and scalar Div/Mul (the v2/v3 scale);
* the terms of one layer meet the **c2c** scores (a MatMul of q and kᵀ) in one tree of
  Adds; its root is what the softmax path reads.

Whether a term is c2p or p2c, the span value and the scale value are not guessed here:
``debertrt.compiler.rewrite`` evaluates the matched tensors and checks them against the
relative-position table, so a pattern that merely looks right but computes something
else is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from debertrt.core.onnx_utils import layer_label

# Ops that only move or broadcast the index (its S×S content is unchanged).
INDEX_PLUMBING = ("Expand", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Cast")
_SEARCH_LIMIT = 20000


class PatternError(Exception):
    """A graph region that is not the disentangled-attention pattern; ``where`` names it."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


# ---------------------------------------------------------------------------- helpers


def producer(tensor):
    return tensor.inputs[0] if getattr(tensor, "inputs", None) else None


def constant_value(tensor) -> np.ndarray | None:
    """The value of a tensor fixed in the graph (initializer, Constant node, through Identity/Cast)."""
    import onnx_graphsurgeon as gs

    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is None:
        return None
    if node.op == "Constant":
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        for key in ("value_float", "value_int", "value_floats", "value_ints"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
        return None
    if node.op == "Identity":
        return constant_value(node.inputs[0])
    if node.op == "Cast":
        inner = constant_value(node.inputs[0])
        if inner is None:
            return None
        from onnx import helper

        to = node.attrs.get("to")
        try:
            return inner.astype(helper.tensor_dtype_to_np_dtype(int(to)))
        except Exception:
            return None
    return None


def is_zero_constant(tensor) -> bool:
    value = constant_value(tensor)
    return value is not None and value.size >= 1 and not np.any(value)


class _Reach:
    """Memoised: does a tensor depend on a Range node (without looking through Shape)?"""

    def __init__(self):
        self._memo: dict[int, bool] = {}

    def __call__(self, tensor) -> bool:
        key = id(tensor)
        if key in self._memo:
            return self._memo[key]
        found, seen, stack = False, set(), [tensor]
        while stack and not found:
            t = stack.pop()
            if id(t) in self._memo:
                found = self._memo[id(t)]
                if found:
                    break
                continue
            node = producer(t)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if len(seen) > _SEARCH_LIMIT:
                break
            if node.op == "Range":
                found = True
                break
            if node.op in ("Shape", "Size"):
                continue  # shape arithmetic (the span, the expand shape) is not the position grid
            stack.extend(node.inputs)
        self._memo[key] = found
        return found


# ---------------------------------------------------------------------------- one term


@dataclass
class IndexPath:
    """``delta = clamp(±rel + span, 0, 2·span − 1)`` as found in the graph."""

    delta: object          # the clamp's output (before broadcasting)
    clamp: object          # the Clip (or outer Min/Max) node
    rel: object            # the ±relative-position operand
    span: object           # the span operand
    span_subtracted: bool  # Sub(span, rel) instead of Add


@dataclass
class Term:
    """One positional term: ``factor · [transpose] GatherElements(scores, index)``."""

    gather: object
    scores: object              # the gather's data input: q·pos_kᵀ (c2p) or k·pos_qᵀ (p2c)
    index: IndexPath
    out: object                 # the tensor that enters the score sum
    transposed: bool
    factors: list = field(default_factory=list)   # [(op, tensor)] for Div / Mul by a scalar
    chain: list = field(default_factory=list)     # nodes between the gather and the sum
    first_add: object = None
    label: str = ""
    kind: str | None = None     # "c2p" / "p2c", decided by evaluating the index


def _peel_clamp(node, reaches_range):
    """The clamped operand of Clip(x, lo, hi), Min(Max(x, lo), hi) or Max(Min(x, hi), lo)."""
    if node.op == "Clip":
        return node.inputs[0]
    x = None
    for _ in range(2):
        if node is None or node.op not in ("Min", "Max") or len(node.inputs) != 2:
            return x
        inner = [t for t in node.inputs if reaches_range(t)]
        if len(inner) != 1:
            return None
        x = inner[0]
        node = producer(x)
    return x


def parse_index(gather, reaches_range, where: str) -> IndexPath:
    t = gather.inputs[1]
    while producer(t) is not None and producer(t).op in INDEX_PLUMBING:
        t = producer(t).inputs[0]
    clamp = producer(t)
    if clamp is None or clamp.op not in ("Clip", "Min", "Max"):
        raise PatternError(where, f"the index of {gather.op} {gather.name!r} comes from "
                                  f"{clamp.op if clamp else 'a graph input'} "
                                  f"{getattr(clamp, 'name', '')!r}, not from clamp(rel + span, 0, 2*span - 1)")
    x = _peel_clamp(clamp, reaches_range)
    while x is not None and producer(x) is not None and producer(x).op in ("Cast", "Identity"):
        x = producer(x).inputs[0]
    combine = producer(x) if x is not None else None
    if combine is None or combine.op not in ("Add", "Sub") or len(combine.inputs) != 2:
        raise PatternError(where, f"the clamp {clamp.name!r} on the index of {gather.name!r} does not "
                                  f"clamp rel + span (found {combine.op if combine else 'nothing'})")
    a, b = combine.inputs
    ra, rb = reaches_range(a), reaches_range(b)
    if ra == rb:
        raise PatternError(where, f"cannot tell the relative positions from the span in {combine.op} "
                                  f"{combine.name!r} (index of {gather.name!r}): "
                                  f"{'both' if ra else 'neither'} operand(s) come from a Range")
    if combine.op == "Sub":
        if ra:
            raise PatternError(where, f"{combine.name!r} computes rel - span, not span ± rel")
        return IndexPath(t, clamp, rel=b, span=a, span_subtracted=True)
    return IndexPath(t, clamp, rel=a if ra else b, span=b if ra else a, span_subtracted=False)


def swaps_last_two(perm) -> bool:
    perm = list(perm or [])
    n = len(perm)
    return n >= 2 and perm[:-2] == list(range(n - 2)) and perm[-2:] == [n - 1, n - 2]


def parse_term(gather, reaches_range, scopes) -> Term:
    where = layer_label(gather, scopes)
    if len(gather.inputs) != 2:
        raise PatternError(where, f"{gather.name!r} has {len(gather.inputs)} inputs")
    index = parse_index(gather, reaches_range, where)
    term = Term(gather, gather.inputs[0], index, out=None, transposed=False, label=where)
    t = gather.outputs[0]
    while True:
        users = list(t.outputs)
        if len(users) != 1:
            raise PatternError(where, f"the gathered scores {t.name!r} are used by {len(users)} nodes; "
                                      f"expected exactly one path into the attention-score sum")
        node = users[0]
        if node.op == "Add":
            term.out, term.first_add = t, node
            return term
        if node.op == "Transpose" and swaps_last_two(node.attrs.get("perm")):
            term.transposed = not term.transposed
        elif node.op == "Div" and len(node.inputs) == 2 and node.inputs[0] is t:
            term.factors.append(("Div", node.inputs[1]))
        elif node.op == "Mul" and len(node.inputs) == 2:
            term.factors.append(("Mul", node.inputs[1] if node.inputs[0] is t else node.inputs[0]))
        else:
            raise PatternError(where, f"the gathered scores of {gather.name!r} flow into {node.op} {node.name!r}; "
                                      f"expected a transpose, a scalar Div/Mul or the score Add")
        term.chain.append(node)
        t = node.outputs[0]


# ---------------------------------------------------------------------------- one layer


@dataclass
class LayerMatch:
    """The terms of one layer, the c2c scores they are added to, and the Add tree's root."""

    label: str
    terms: list           # [Term]
    c2c: object           # the c2c scores tensor (a MatMul output)
    root: object          # the root Add node: its output becomes the plugin's output
    adds: list            # every Add of the positional sum
    zeros: int = 0        # zero constants folded away (torchscript's ``score = 0``)


class _SumTree:
    def __init__(self, terms):
        self.by_out = {id(t.out): t for t in terms}
        self._memo = {}

    def positional(self, tensor) -> bool:
        """Does this tensor sum (only through Adds) at least one positional term?"""
        key = id(tensor)
        if key not in self._memo:
            self._memo[key] = False  # cycle guard
            node = producer(tensor)
            self._memo[key] = key in self.by_out or (
                node is not None and node.op == "Add" and any(self.positional(i) for i in node.inputs))
        return self._memo[key]

    def flatten(self, tensor, adds=None):
        """Leaves of the Add tree rooted at ``tensor``: ("term", Term) or ("leaf", tensor)."""
        if id(tensor) in self.by_out:
            return [("term", self.by_out[id(tensor)])]
        node = producer(tensor)
        if node is not None and node.op == "Add" and self.positional(tensor):
            if adds is not None:
                adds.append(node)
            return [leaf for i in node.inputs for leaf in self.flatten(i, adds)]
        return [("leaf", tensor)]

    def purely_positional(self, tensor) -> bool:
        return all(kind == "term" or is_zero_constant(t) for kind, t in self.flatten(tensor))

    def has_scores(self, tensor) -> bool:
        return any(kind == "leaf" and not is_zero_constant(t) for kind, t in self.flatten(tensor))


def group_layers(terms: list, scopes) -> list[LayerMatch]:
    """Group terms by the Add tree they meet c2c in; one group per attention layer."""
    tree = _SumTree(terms)
    roots: dict[int, list] = {}
    root_nodes = {}
    for term in terms:
        node = term.first_add
        while True:
            out = node.outputs[0]
            users = list(out.outputs)
            above = users[0] if len(users) == 1 and users[0].op == "Add" else None
            if not tree.has_scores(out):
                if above is None:
                    raise PatternError(term.label, f"the positional scores of {term.gather.name!r} are summed in "
                                                   f"{node.name!r} but never meet the c2c scores (q·kᵀ)")
                node = above
                continue
            if above is not None:
                sibling = [t for t in above.inputs if t is not out]
                if sibling and all(tree.purely_positional(s) for s in sibling):
                    node = above
                    continue
            break
        roots.setdefault(id(node), []).append(term)
        root_nodes[id(node)] = node

    layers = []
    for key, members in roots.items():
        root = root_nodes[key]
        label = members[0].label
        adds = []
        leaves = tree.flatten(root.outputs[0], adds)
        found = [t for kind, t in leaves if kind == "term"]
        if {id(t) for t in found} != {id(t) for t in members}:
            raise PatternError(label, f"the score sum {root.name!r} does not hold exactly the positional terms "
                                      f"that lead to it")
        for add in adds:
            if add is not root and len(add.outputs[0].outputs) != 1:
                raise PatternError(label, f"the partial score sum {add.outputs[0].name!r} is also used elsewhere")
        others = [t for kind, t in leaves if kind == "leaf"]
        zeros = [t for t in others if is_zero_constant(t)]
        scores = [t for t in others if not is_zero_constant(t)]
        if len(scores) != 1:
            raise PatternError(label, f"the score sum {root.name!r} adds {len(scores)} non-positional tensors "
                                      f"({', '.join(repr(t.name) for t in scores)}); expected only the c2c scores")
        c2c = scores[0]
        made_by = producer(c2c)
        if made_by is None or made_by.op != "MatMul":
            raise PatternError(label, f"the c2c scores {c2c.name!r} added in {root.name!r} come from "
                                      f"{made_by.op if made_by else 'a graph input'}, not from a MatMul of q and kᵀ")
        layers.append(LayerMatch(label, members, c2c, root, adds, zeros=len(zeros)))
    return layers


def find_disentangled_attention(graph, scopes) -> list[LayerMatch]:
    """Every GatherElements in ``graph`` as a positional term, grouped by layer."""
    reaches_range = _Reach()
    gathers = [n for n in graph.nodes if n.op == "GatherElements"]
    terms = [parse_term(g, reaches_range, scopes) for g in gathers]
    return group_layers(terms, scopes)


def scale_on_scores(c2c):
    """Where c2c's scale sits: ("q" | "k", op, tensor) for a scalar Div/Mul on a MatMul input, else None."""
    matmul = producer(c2c)
    for side, t in zip(("q", "k"), matmul.inputs):
        node = producer(t)
        while node is not None and node.op in ("Transpose", "Reshape", "Cast", "Identity"):
            t = node.inputs[0]
            node = producer(t)
        if node is not None and node.op in ("Div", "Mul") and len(node.inputs) == 2:
            scalar = node.inputs[1]
            if node.op == "Mul" and constant_value(node.inputs[0]) is not None:
                scalar = node.inputs[0]
            return side, node.op, scalar
    return None
