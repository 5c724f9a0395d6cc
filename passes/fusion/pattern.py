"""A small pattern-rewrite engine over onnx-graphsurgeon graphs.

A rule is a plain class (see :class:`Rule`) that declares one or more *patterns*, a ``check``
that returns :meth:`MatchResult.fail` with a reason when it declines, and a ``rewrite``. A pass
lists its rules explicitly and calls :func:`onnxopt.passes.fusion.sweep.apply_rules`.

Patterns are trees written from the output upwards::

    Op("Mul", Var("x"), Op("Sigmoid", Var("x"), name="sig"), name="mul")

- :class:`Op` matches the producer of a tensor by op type (one or several), optionally with
  fixed attributes; its node is recorded as ``m.nodes[name]``.
- :class:`Var` captures any tensor; a name used twice must bind the same tensor.
- :class:`Const` captures a constant (initializer or ``Constant`` output) with an optional
  predicate on its value; the value is in ``m.values[name]``.

The helper handles commutative ops (Add, Mul, Max, Min, Sum with two inputs) once, by trying
both input orders. A structural match is rejected (and the reason noted) when an intermediate
tensor of the match is a graph output or has consumers outside the match: the rewrite would
otherwise have to keep it alive, changing nothing or duplicating work.

Sites are keyed by the name of the pattern's root node (``ctx.allow(key)``, ``PassResult.sites``)
so the pass manager can bisect a failing rewrite.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt import provenance
from onnxopt.graph import const_value, is_graph_output, producer

logger = logging.getLogger(__name__)

#: ops whose two inputs may be swapped
COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "And", "Or", "Equal"})
#: how many decline notes a pass keeps (the rest are counted)
MAX_NOTES = 20


@dataclass
class MatchResult:
    """Outcome of a ``check``: truthy when the rule may fire, else carries the reason."""

    ok: bool
    reason: str = ""
    #: a decline that is not worth a note (the site simply is not an instance of the rule)
    silent: bool = False

    @classmethod
    def success(cls) -> MatchResult:
        return cls(True)

    @classmethod
    def fail(cls, reason: str) -> MatchResult:
        return cls(False, reason)

    @classmethod
    def not_applicable(cls, reason: str = "") -> MatchResult:
        """Decline without a note: the structural match is not a real instance of the rule."""
        return cls(False, reason, silent=True)

    def __bool__(self) -> bool:
        return self.ok


class Pattern:
    """Base of pattern elements."""

    name: str | None = None


class Var(Pattern):
    """Any tensor; the same name twice must be the same tensor."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Var({self.name})"


class Const(Pattern):
    """A constant tensor, optionally satisfying ``pred(value)``."""

    def __init__(self, name: str | None = None, pred: Callable[[np.ndarray], bool] | None = None):
        self.name = name
        self.pred = pred

    def __repr__(self) -> str:
        return f"Const({self.name})"


class Op(Pattern):
    """The producer of a tensor: op type(s), inputs (patterns), optional attribute values.

    Args:
        op: an op type or a tuple of alternatives.
        *inputs: patterns of the node's first ``len(inputs)`` inputs.
        name: key in ``Match.nodes``.
        attrs: attributes that must equal these values (missing attributes never match).
        exact_arity: the node must have exactly ``len(inputs)`` inputs.
        domain: the node's domain ("" for standard ops, None for any domain).
    """

    def __init__(
        self,
        op: str | tuple[str, ...],
        *inputs: Pattern,
        name: str | None = None,
        attrs: dict[str, Any] | None = None,
        exact_arity: bool = True,
        domain: str | None = "",
    ) -> None:
        self.ops = (op,) if isinstance(op, str) else tuple(op)
        self.inputs = inputs
        self.name = name
        self.attrs = attrs or {}
        self.exact_arity = exact_arity
        self.domain = domain

    def __repr__(self) -> str:
        return f"Op({'|'.join(self.ops)}, {', '.join(map(repr, self.inputs))})"


@dataclass
class Match:
    """Bindings of one structural match."""

    root: gs.Node
    nodes: dict[str, gs.Node] = field(default_factory=dict)
    tensors: dict[str, gs.Tensor] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    matched: list[gs.Node] = field(default_factory=list)
    pattern_index: int = 0
    #: what a rule's check found beyond the pattern, for its rewrite
    extra: Any = None

    @property
    def output(self) -> gs.Tensor:
        return self.root.outputs[0]

    def _snapshot(self) -> tuple[dict, dict, dict, int]:
        return dict(self.nodes), dict(self.tensors), dict(self.values), len(self.matched)

    def _restore(self, snap: tuple[dict, dict, dict, int]) -> None:
        self.nodes, self.tensors, self.values = dict(snap[0]), dict(snap[1]), dict(snap[2])
        del self.matched[snap[3] :]


def _attr_equal(have: Any, want: Any) -> bool:
    if isinstance(want, (list, tuple)):
        return isinstance(have, (list, tuple)) and list(have) == list(want)
    if isinstance(want, float):
        return isinstance(have, (int, float)) and abs(float(have) - want) <= 1e-6 * max(
            1, abs(want)
        )
    return have == want


def _match_tensor(pat: Pattern, t: gs.Tensor, m: Match) -> bool:
    if isinstance(pat, Var):
        bound = m.tensors.get(pat.name)
        if bound is not None:
            return bound is t
        m.tensors[pat.name] = t
        return True
    if isinstance(pat, Const):
        value = const_value(t)
        if value is None:
            return False
        if pat.pred is not None:
            try:
                if not bool(pat.pred(value)):
                    return False
            except (ValueError, TypeError, IndexError):
                return False
        if pat.name:
            if pat.name in m.tensors and m.tensors[pat.name] is not t:
                return False
            m.tensors[pat.name] = t
            m.values[pat.name] = value
        return True
    if isinstance(pat, Op):
        node = producer(t)
        if pat.name and pat.name in m.nodes:  # a second reference to an already matched node
            return node is not None and node is m.nodes[pat.name] and node.outputs[0] is t
        if node is None or node.op not in pat.ops or len(node.outputs) < 1:
            return False
        if node.outputs[0] is not t:
            return False
        return _match_node(pat, node, m)
    raise TypeError(f"unknown pattern element {pat!r}")


def _match_node(pat: Op, node: gs.Node, m: Match) -> bool:
    if node.op not in pat.ops:
        return False
    if pat.domain is not None and (node.domain or "") not in (
        pat.domain,
        ("ai.onnx" if pat.domain == "" else pat.domain),
    ):
        return False
    if any(n is node for n in m.matched):
        return False
    for k, v in pat.attrs.items():
        if k not in node.attrs or not _attr_equal(node.attrs[k], v):
            return False
    n_in = len(pat.inputs)
    if len(node.inputs) < n_in or (pat.exact_arity and len(node.inputs) != n_in):
        return False
    orders: list[Sequence[int]] = [range(n_in)]
    if node.op in COMMUTATIVE and n_in == 2:
        orders.append((1, 0))
    for order in orders:
        snap = m._snapshot()
        if pat.name:
            m.nodes[pat.name] = node
        m.matched.append(node)
        if all(_match_tensor(p, node.inputs[i], m) for p, i in zip(pat.inputs, order, strict=True)):
            return True
        m._restore(snap)
    return False


def match_at(pattern: Op, node: gs.Node) -> Match | None:
    """Structurally match ``pattern`` with ``node`` as its root; None when it does not fit."""
    m = Match(root=node)
    return m if _match_node(pattern, node, m) else None


def inputs_outside(m: Match) -> MatchResult:
    """No tensor a structural match binds (``Var``, ``Const``) may be computed by a node of
    the match: in ``Add(y, y)`` with ``y = MatMul(a, b)`` the pattern MatMul + Add binds ``y``
    as the bias too, and the rewrite would read a value it removes."""
    inside = {id(n) for n in m.matched}
    for key, t in m.tensors.items():
        p = producer(t)
        if p is not None and id(p) in inside:
            return MatchResult.fail(f"input '{key}' is '{t.name}', computed inside the match")
    return MatchResult.success()


def exclusive(graph: gs.Graph, m: Match) -> MatchResult:
    """Intermediates of ``m`` must not be graph outputs nor feed nodes outside the match."""
    inside = {id(n) for n in m.matched}
    for t in m.root.outputs[1:]:  # rewrites replace the first output only
        if t.name and (t.outputs or is_graph_output(graph, t)):
            return MatchResult.fail(f"extra output '{t.name}' of '{m.root.name}' is used")
    for node in m.matched:
        if node is m.root:
            continue
        for t in node.outputs:
            if is_graph_output(graph, t):
                return MatchResult.fail(f"intermediate '{t.name}' is a graph output")
            for user in t.outputs:
                if id(user) not in inside:
                    return MatchResult.fail(
                        f"intermediate '{t.name}' also feeds {user.op} '{user.name}'"
                    )
    return MatchResult.success()


class Rule:
    """A fusion rule. Subclasses set ``name`` and ``patterns`` and implement the hooks.

    ``check`` may read the match and the graph but must not modify them; ``rewrite`` edits the
    graph. Rewrites usually create new nodes whose output is the root's output tensor (so the
    graph output names stay) via :func:`replace_root`.
    """

    name: ClassVar[str] = ""
    #: patterns tried in order; the first that matches structurally is used
    patterns: ClassVar[tuple[Op, ...]] = ()
    #: the minimum default-domain opset the rewrite needs (0: none)
    min_opset: ClassVar[int] = 0
    #: needs ``--target onnxruntime`` (com.microsoft contrib ops)
    contrib: ClassVar[bool] = False

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:  # pragma: no cover
        raise NotImplementedError

    def root_ops(self) -> set[str]:
        return {op for p in self.patterns for op in p.ops}

    def __repr__(self) -> str:
        return f"<Rule {self.name}>"


def replace_root(
    graph: gs.Graph, m: Match, new_nodes: Iterable[gs.Node], new_output: gs.Tensor | None = None
) -> None:
    """Insert ``new_nodes`` and make the root's output come from ``new_output`` (or the last
    new node's first output); then detach every matched node (cleanup removes them)."""
    new_nodes = list(new_nodes)
    out = m.root.outputs[0]
    if new_output is None:
        new_output = new_nodes[-1].outputs[0]
    for node in new_nodes:
        node.outputs = [out if t is new_output else t for t in node.outputs]
    if out.dtype is None and new_output.dtype is not None:
        out.dtype = new_output.dtype
    provenance.inherit(new_nodes, m.matched)  # the new nodes come from every matched node
    for node in m.matched:
        node.outputs.clear()
        node.inputs.clear()
    graph.nodes.extend(new_nodes)


def detach(nodes: Iterable[gs.Node]) -> None:
    for node in nodes:
        node.outputs.clear()
        node.inputs.clear()


def scalar_close(value: float, rtol: float | None = None) -> Callable[[Any], bool]:
    """Predicate: every element of a constant equals ``value`` to the precision of its dtype.

    A float constant may differ from ``value`` by 2 units in the last place of its dtype
    (``rtol = 2·eps``: float32 2.4e-7, float16 2e-3), which covers ``value`` rounded to that
    dtype; an integer constant must equal it. A constant further off is another function, and
    the fused op (which uses ``value`` itself) would change the outputs: 3.0015 in place of 3
    in ``Clip(x + 3, 0, 6) / 6`` moves HardSigmoid's linear part by 2.5e-4.
    """

    def pred(a: np.ndarray) -> bool:
        a = np.asarray(a)
        if a.size < 1 or not np.issubdtype(a.dtype, np.number):
            return False
        tol = rtol
        if tol is None:
            tol = 2 * float(np.finfo(a.dtype).eps) if np.issubdtype(a.dtype, np.floating) else 0.0
        return bool(np.all(np.abs(a.astype(np.float64) - value) <= tol * abs(value)))

    return pred


def is_scalar_like(a: np.ndarray) -> bool:
    return np.asarray(a).size == 1
