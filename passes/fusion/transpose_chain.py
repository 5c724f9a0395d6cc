"""Transpose pairs around elementwise chains cancel (the NHWC round trips of TensorFlow and
Keras exports).

``Transpose(f_n(... f_1(Transpose(x, p), c_1) ...), q)`` with ``q`` undoing ``p`` is
``f_n(... f_1(x, c'_1) ...)``: an elementwise op commutes with a transpose when its constant
operand is transposed too. A constant ``c`` of rank ``k <= r`` is first aligned to the rank
``r`` of ``x`` (leading ones), then ``c' = transpose(c, p^-1)``, so that
``transpose(c', p) = c``. Unary elementwise ops need nothing.

Keras writes ``Conv -> Transpose(to NHWC) -> Add(bias) -> Relu -> Sub/Mul/Add (BatchNorm) ->
Transpose(to NCHW) -> Conv``: after this rule the bias sits right after the Conv in NCHW and
folds into it (fold-bias), and the layout round trip is gone.

Declines (with a note): an intermediate read elsewhere or a graph output, a non-constant second
operand, a constant of higher rank, ops that are not elementwise.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import bypass, const_value, is_graph_output, producer
from onnxopt.passes.fusion._base import const
from onnxopt.passes.fusion.pattern import Match, MatchResult, Op, Rule, Var

#: elementwise ops of one data input (Clip's bounds, if any, must be scalar constants)
UNARY = frozenset(
    {
        "Relu",
        "Sigmoid",
        "Tanh",
        "LeakyRelu",
        "Elu",
        "Selu",
        "Celu",
        "HardSigmoid",
        "HardSwish",
        "Softplus",
        "Softsign",
        "Abs",
        "Neg",
        "Exp",
        "Log",
        "Sqrt",
        "Erf",
        "Cast",
        "Identity",
        "Reciprocal",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "Gelu",
        "Mish",
        "Swish",
        "Clip",
    }
)
#: elementwise ops of two inputs, one of which must be a constant
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu"})
#: at most this many ops between the two Transposes
MAX_CHAIN = 16


def _inverse(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def _data_input(node: gs.Node) -> tuple[int, str] | tuple[None, str]:
    """(index of the one non-constant input, "") or (None, why not)."""
    if node.op in UNARY:
        if any(const_value(t) is None for t in node.inputs[1:] if t.name):
            return None, f"{node.op} '{node.name}' has a non-constant parameter"
        if any(const_value(t).size != 1 for t in node.inputs[1:] if t.name):
            return None, f"{node.op} '{node.name}' has a non-scalar parameter"
        return 0, ""
    if node.op in BINARY and len(node.inputs) == 2:
        consts = [const_value(t) is not None for t in node.inputs]
        if consts == [False, True] or (consts == [True, False] and node.op != "PRelu"):
            return consts.index(False), ""
        return None, f"{node.op} '{node.name}' has no constant operand"
    return None, f"{node.op} '{node.name}' is not elementwise"


class TransposeChain(Rule):
    """Transpose(p) -> elementwise ops with constants -> Transpose(p^-1): the ops alone."""

    name: ClassVar[str] = "transpose_chain"
    patterns = (Op("Transpose", Var("y"), name="t2"),)

    def _chain(self, graph: gs.Graph, t2: gs.Node) -> tuple[gs.Node, list[gs.Node]] | str:
        """(the opening Transpose, the chain from it to ``t2``) or why there is none."""
        chain: list[gs.Node] = []
        cur = t2.inputs[0]
        for _ in range(MAX_CHAIN + 1):
            node = producer(cur)
            if node is None:
                return "no opening Transpose"
            if len(cur.outputs) != 1 or is_graph_output(graph, cur):
                return f"'{cur.name}' is read elsewhere or is a graph output"
            if node.op == "Transpose":
                return (node, chain[::-1]) if chain else "no ops between the Transposes"
            index, why = _data_input(node)
            if index is None:
                return why
            chain.append(node)
            cur = node.inputs[index]
        return "chain too long"

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        t2 = m.nodes["t2"]
        found = self._chain(graph, t2)
        if isinstance(found, str):
            return MatchResult.not_applicable(found)
        t1, chain = found
        p, q = t1.attrs.get("perm"), t2.attrs.get("perm")
        if p is None or q is None or len(p) != len(q):
            return MatchResult.fail("Transposes without matching perms")
        if [p[i] for i in q] != list(range(len(p))):
            return MatchResult.not_applicable("the second Transpose does not undo the first")
        for node in chain:
            for t in node.inputs:
                v = const_value(t)
                if v is not None and v.ndim > len(p):
                    return MatchResult.fail(f"constant '{t.name}' has rank above {len(p)}")
        m.extra = (t1, chain)
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        t1, chain = m.extra
        t2 = m.nodes["t2"]
        inv = _inverse([int(i) for i in t1.attrs["perm"]])
        chain[0].inputs[_data_input(chain[0])[0]] = t1.inputs[0]
        for node in chain:
            data = _data_input(node)[0]
            for k, t in enumerate(node.inputs):
                v = const_value(t) if k != data else None
                if v is not None and v.size > 1:
                    full = v.reshape((1,) * (len(inv) - v.ndim) + v.shape)
                    node.inputs[k] = const(graph, f"{t.name}_t", np.transpose(full, inv))
            for out in node.outputs:
                out.shape = None  # the layout changed; shape inference fills it again
        reason = bypass(graph, t2, chain[-1].outputs[0], t2.outputs[0])
        if reason:  # pragma: no cover - checked: the chain's end feeds t2 alone
            raise RuntimeError(reason)
        t1.inputs.clear()
        t1.outputs.clear()
