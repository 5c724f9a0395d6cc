"""cse: common subexpressions computed once."""

from __future__ import annotations

from onnxopt.passes.cleanup import CommonSubexpressions
from tests.helpers import apply, assert_identical, ops, parse

HEAD = '<ir_version: 8, opset_import: ["": 17]>'


def test_duplicate_chain_merged() -> None:
    m = parse(
        HEAD
        + """
    g (float[2,3] x) => (float[2,3] y) {
      a = Relu(x)
      b = Relu(x)
      c = Sigmoid(a)
      d = Sigmoid(b)
      y = Add(c, d)
    }"""
    )
    res, out = apply(CommonSubexpressions(), m)
    assert res.rewrites == 2
    assert sorted(ops(out)) == ["Add", "Relu", "Sigmoid"]
    assert_identical(m, out)


def test_duplicate_graph_outputs_keep_names() -> None:
    m = parse(
        HEAD
        + """
    g (float[2,3] x) => (float[2,3] y, float[2,3] z) {
      a = Relu(x)
      y = Neg(a)
      z = Neg(a)
    }"""
    )
    res, out = apply(CommonSubexpressions(), m)
    assert not res.changed  # both are graph outputs: neither can take the other's name
    assert res.notes
    m2 = parse(
        HEAD
        + """
    g (float[2,3] x) => (float[2,3] y) {
      a = Relu(x)
      y = Neg(a)
      b = Neg(a)
      c = Exp(b)
      y2 = Add(y, c)
    }""".replace("=> (float[2,3] y)", "=> (float[2,3] y, float[2,3] y2)")
    )
    res2, out2 = apply(CommonSubexpressions(), m2)
    assert res2.rewrites == 1 and ops(out2).count("Neg") == 1
    assert [o.name for o in out2.graph.output] == ["y", "y2"]
    assert_identical(m2, out2)


def test_negative_different_attrs_and_random() -> None:
    m = parse(
        HEAD
        + """
    g (float[2,3] x) => (float[2,3] y) {
      a = LeakyRelu<alpha = 0.1>(x)
      b = LeakyRelu<alpha = 0.2>(x)
      r1 = RandomUniformLike(x)
      r2 = RandomUniformLike(x)
      c = Add(a, b)
      d = Add(r1, r2)
      y = Mul(c, d)
    }"""
    )
    res, out = apply(CommonSubexpressions(), m)
    assert not res.changed
    assert sorted(ops(out)) == sorted(ops(m))
