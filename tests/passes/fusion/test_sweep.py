"""apply_rules (passes/fusion/sweep.py): declines with notes, sites and bisection filters,
target and opset gates."""

from __future__ import annotations

import numpy as np

from onnxopt.contract import PassContext
from onnxopt.graph import to_graph
from onnxopt.passes.fusion.pattern import (
    MatchResult,
    Op,
    Rule,
    Var,
    replace_root,
)
from onnxopt.passes.fusion.sweep import apply_rules
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


def test_intermediate_graph_output_declines_with_note():
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2,4] x) => (float[2,4] y, float[2,4] s) { s = Sigmoid(x)  y = Mul(x, s) }"""
    g = to_graph(parse(text))
    stats = apply_rules(g, [_Silu()], PassContext())
    assert stats.rewrites == 0
    assert any("graph output" in n for n in stats.notes)


def test_intermediate_outside_consumer_declines_with_note():
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2,4] x) => (float[2,4] y, float[2,4] z) { s = Sigmoid(x) y = Mul(x, s) z = Neg(s) }"""
    g = to_graph(parse(text))
    stats = apply_rules(g, [_Silu()], PassContext())
    assert stats.rewrites == 0 and any("also feeds Neg" in n for n in stats.notes)


def test_sites_and_site_filter():
    g = to_graph(parse(SILU % "x, s"))
    stats = apply_rules(g, [_Silu()], PassContext())
    assert stats.counts == {"silu": 1} and len(stats.sites) == 1
    g2 = to_graph(parse(SILU % "x, s"))
    stats2 = apply_rules(g2, [_Silu()], PassContext(site_filter=set()))
    assert stats2.rewrites == 0


def test_check_reason_goes_to_notes():
    class Declines(_Silu):
        name = "declines"

        def check(self, graph, m):
            return MatchResult.fail("not today")

    stats = apply_rules(to_graph(parse(SILU % "x, s")), [Declines()], PassContext())
    assert stats.notes == ["declines at 'onnxopt_Mul_1': not today"] or any(
        "not today" in n for n in stats.notes
    )


def test_contrib_rules_need_onnxruntime_target():
    class Contrib(_Silu):
        name = "contrib"
        contrib = True

    assert apply_rules(to_graph(parse(SILU % "x, s")), [Contrib()], PassContext()).rewrites == 0
    assert (
        apply_rules(
            to_graph(parse(SILU % "x, s")), [Contrib()], PassContext(target="onnxruntime")
        ).rewrites
        == 1
    )


def test_min_opset_noted():
    class Needs20(_Silu):
        name = "needs20"
        min_opset = 20

    stats = apply_rules(to_graph(parse(SILU % "x, s")), [Needs20()], PassContext())
    assert stats.rewrites == 0 and any("opset >= 20" in n for n in stats.notes)
