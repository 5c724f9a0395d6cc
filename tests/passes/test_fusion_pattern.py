"""The pattern helper (onnxopt.passes.fusion.pattern) and shared helpers for the fusion tests."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort

from onnxopt.contract import PassContext, PassResult
from onnxopt.graph import to_graph
from onnxopt.passes.fusion.pattern import (
    Const,
    MatchResult,
    Op,
    Rule,
    Var,
    apply_rules,
    match_at,
    replace_root,
)

RTOL, ATOL = 1e-4, 1e-5


def make(text: str, inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Parse ``text`` and add ``inits`` as initializers."""
    m = onnx.parser.parse_model(text)
    for name, arr in (inits or {}).items():
        m.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(arr), name))
    onnx.checker.check_model(m)
    return m


def apply(model: onnx.ModelProto, pass_cls: type, target: str = "onnx",
          site_filter: set[str] | None = None) -> tuple[PassResult, onnx.ModelProto]:
    """Run a fusion pass the way the pass manager does (on a copy); return result and model."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    res = pass_cls().run_model(copy, PassContext(target=target, site_filter=site_filter))
    out = res.model if res.model is not None else copy
    onnx.checker.check_model(out)
    return res, out


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    init = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        shape = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_same(a: onnx.ModelProto, b: onnx.ModelProto, rtol: float = RTOL,
                atol: float = ATOL) -> None:
    feeds = feeds_for(a)
    for x, y in zip(run(a, feeds), run(b, feeds), strict=True):
        scale = max(1.0, float(np.max(np.abs(x))))
        np.testing.assert_allclose(y, x, rtol=rtol, atol=atol * scale)


def unchanged(model: onnx.ModelProto, pass_cls: type, target: str = "onnx") -> PassResult:
    res, out = apply(model, pass_cls, target)
    assert not res.changed and res.rewrites == 0
    assert ops(out) == ops(model)
    return res


# ---- the helper itself ------------------------------------------------------------------------

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
        g = to_graph(make(SILU % order))
        mul = [n for n in g.nodes if n.op == "Mul"][0]
        m = match_at(_Silu.patterns[0], mul)
        assert m is not None and m.tensors["x"].name == "x" and m.nodes["sig"].op == "Sigmoid"


def test_same_var_must_bind_same_tensor():
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2,4] x, float[2,4] z) => (float[2,4] y) { s = Sigmoid(z)  y = Mul(x, s) }"""
    g = to_graph(make(text))
    mul = [n for n in g.nodes if n.op == "Mul"][0]
    assert match_at(_Silu.patterns[0], mul) is None


def test_const_predicate():
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2,4] x) => (float[2,4] y) { y = Mul(x, c) }"""
    g = to_graph(make(text, {"c": np.float32(2.0)}))
    pat_one = Op("Mul", Var("x"), Const("c", lambda a: bool(np.all(a == 1))))
    pat_two = Op("Mul", Var("x"), Const("c", lambda a: bool(np.all(a == 2))))
    assert match_at(pat_one, g.nodes[0]) is None
    assert match_at(pat_two, g.nodes[0]).values["c"] == 2


def test_intermediate_graph_output_declines_with_note():
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2,4] x) => (float[2,4] y, float[2,4] s) { s = Sigmoid(x)  y = Mul(x, s) }"""
    g = to_graph(make(text))
    stats = apply_rules(g, [_Silu()], PassContext())
    assert stats.rewrites == 0
    assert any("graph output" in n for n in stats.notes)


def test_intermediate_outside_consumer_declines_with_note():
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2,4] x) => (float[2,4] y, float[2,4] z) { s = Sigmoid(x) y = Mul(x, s) z = Neg(s) }"""
    g = to_graph(make(text))
    stats = apply_rules(g, [_Silu()], PassContext())
    assert stats.rewrites == 0 and any("also feeds Neg" in n for n in stats.notes)


def test_sites_and_site_filter():
    g = to_graph(make(SILU % "x, s"))
    stats = apply_rules(g, [_Silu()], PassContext())
    assert stats.counts == {"silu": 1} and len(stats.sites) == 1
    g2 = to_graph(make(SILU % "x, s"))
    stats2 = apply_rules(g2, [_Silu()], PassContext(site_filter=set()))
    assert stats2.rewrites == 0


def test_check_reason_goes_to_notes():
    class Declines(_Silu):
        name = "declines"

        def check(self, graph, m):
            return MatchResult.fail("not today")

    stats = apply_rules(to_graph(make(SILU % "x, s")), [Declines()], PassContext())
    assert stats.notes == ["declines at 'onnxopt_Mul_1': not today"] or any(
        "not today" in n for n in stats.notes)


def test_contrib_rules_need_onnxruntime_target():
    class Contrib(_Silu):
        name = "contrib"
        contrib = True

    assert apply_rules(to_graph(make(SILU % "x, s")), [Contrib()], PassContext()).rewrites == 0
    assert apply_rules(to_graph(make(SILU % "x, s")), [Contrib()],
                       PassContext(target="onnxruntime")).rewrites == 1


def test_min_opset_noted():
    class Needs20(_Silu):
        name = "needs20"
        min_opset = 20

    stats = apply_rules(to_graph(make(SILU % "x, s")), [Needs20()], PassContext())
    assert stats.rewrites == 0 and any("opset >= 20" in n for n in stats.notes)
