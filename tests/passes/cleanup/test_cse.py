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


def test_attribute_values_compared_only_between_candidates(monkeypatch) -> None:
    """A lone node is never keyed by its attribute values (a tree ensemble's attribute lists
    hold 10^5 entries); duplicates still are, and list attributes compare exactly."""
    from onnxopt.passes.cleanup import cse

    keyed: list[str] = []
    real = cse.node_key
    monkeypatch.setattr(cse, "node_key", lambda n: keyed.append(n.name) or real(n))
    m = parse(
        HEAD
        + """
    g (float[2,3] x) => (float[2,3] y) {
      big = Transpose <perm = [1, 0]> (x)
      a = LeakyRelu <alpha = 0.5> (x)
      b = LeakyRelu <alpha = 0.5> (x)
      c = LeakyRelu <alpha = 0.25> (x)
      d = Add(a, b)
      e = Add(d, c)
      t = Transpose <perm = [1, 0]> (big)
      y = Add(e, t)
    }"""
    )
    res, out = apply(CommonSubexpressions(), m)
    assert res.rewrites == 1 and ops(out).count("LeakyRelu") == 2
    assert len(keyed) == 3, keyed  # a, b and c: the three LeakyRelu of x, nothing else
    assert_identical(m, out)


def test_list_attribute_keys_are_exact() -> None:
    from onnxopt.passes.cleanup.cse import _norm

    assert _norm([1, 2, 3]) == _norm([1, 2, 3]) != _norm([1, 2, 4])
    assert _norm([1, 2]) != _norm([1.0, 2.0])  # ints and floats differ
    assert _norm([0.0, 1.5]) != _norm([-0.0, 1.5])  # float bits, not ==
    assert _norm(["a", "b"]) != _norm(["a", "c"])
    assert _norm([]) == _norm([])
