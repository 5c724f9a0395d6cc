"""Patterns and matching (passes/fusion/pattern.py): commutative inputs, shared variables, constant predicates."""

from __future__ import annotations

import numpy as np

from onnxopt.graph import to_graph
from onnxopt.passes.fusion.pattern import (
    Const,
    Op,
    Rule,
    Var,
    match_at,
    replace_root,
)
from tests.helpers import parse

SILU = """<ir_version: 8, opset_import: ["": 17]>
g (float[2,4] x) => (float[2,4] y) { s = Sigmoid(x)  y = Mul(%s) }"""


class _Silu(Rule):
    name = "silu"
    patterns = (Op("Mul", Var("x"), Op("Sigmoid", Var("x"), name="sig"), name="mul"),)

    def rewrite(self, graph, m):
        import onnx_graphsurgeon as gs

        out = gs.Variable("silu_tmp", dtype=np.float32)
        replace_root(graph, m, [gs.Node("Relu", "r", inputs=[m.tensors["x"]], outputs=[out])])


def test_commutative_inputs_both_orders():
    for order in ("x, s", "s, x"):
        g = to_graph(parse(SILU % order))
        mul = [n for n in g.nodes if n.op == "Mul"][0]
        m = match_at(_Silu.patterns[0], mul)
        assert m is not None and m.tensors["x"].name == "x" and m.nodes["sig"].op == "Sigmoid"


def test_same_var_must_bind_same_tensor():
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2,4] x, float[2,4] z) => (float[2,4] y) { s = Sigmoid(z)  y = Mul(x, s) }"""
    g = to_graph(parse(text))
    mul = [n for n in g.nodes if n.op == "Mul"][0]
    assert match_at(_Silu.patterns[0], mul) is None


def test_const_predicate():
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2,4] x) => (float[2,4] y) { y = Mul(x, c) }"""
    g = to_graph(parse(text, {"c": np.float32(2.0)}))
    pat_one = Op("Mul", Var("x"), Const("c", lambda a: bool(np.all(a == 1))))
    pat_two = Op("Mul", Var("x"), Const("c", lambda a: bool(np.all(a == 2))))
    assert match_at(pat_one, g.nodes[0]) is None
    assert match_at(pat_two, g.nodes[0]).values["c"] == 2
