"""remove-identity: Identity/Dropout and friends bypassed."""

from __future__ import annotations

from onnxopt.contract import PassContext
from onnxopt.graph import node_names_unique, to_graph
from onnxopt.passes.cleanup import RemoveIdentity
from tests.helpers import apply, assert_identical, ops, parse

HEAD = '<ir_version: 8, opset_import: ["": 17]>'


def test_identity_and_dropout_removed() -> None:
    m = parse(
        HEAD
        + """
    g (float[2,3] x) => (float[2,3] y) {
      a = Relu(x)
      b = Identity(a)
      c = Dropout(b)
      y = Identity(c)
    }"""
    )
    res, out = apply(RemoveIdentity(), m)
    assert res.changed and res.rewrites == 3
    assert ops(out) == ["Relu"]
    assert out.graph.node[0].output[0] == "y"
    assert_identical(m, out)


def test_dropout_training_mode_false_constant() -> None:
    m = parse(
        HEAD
        + """
    g (float[2,3] x) => (float[2,3] y) <bool t = {0}, float r = {0.5}> {
      a = Relu(x)
      d = Dropout(a, r, t)
      y = Neg(d)
    }"""
    )
    res, out = apply(RemoveIdentity(), m)
    assert res.rewrites == 1 and ops(out) == ["Relu", "Neg"]
    assert_identical(m, out)


def test_negative_training_mode_mask_and_input_to_output() -> None:
    m = parse(
        HEAD
        + """
    g (float[2,3] x, bool t) => (float[2,3] y, bool[2,3] mk, float[2,3] z) {
      a = Relu(x)
      y = Dropout(a, , t)
      b, mk = Dropout(a)
      z = Identity(x)
    }"""
    )
    res, out = apply(RemoveIdentity(), m)
    assert not res.changed
    assert sorted(ops(out)) == sorted(ops(m))
    assert len(res.notes) == 3  # training_mode not constant, mask used, input -> output


def test_bisection_filter_respected() -> None:
    m = parse(
        HEAD
        + """
    g (float[2] x) => (float[2] y) {
      a = Identity(x)
      b = Relu(a)
      c = Identity(b)
      y = Neg(c)
    }"""
    )
    g = to_graph(m)
    node_names_unique(g)
    first = [n.name for n in g.nodes if n.op == "Identity"][0]
    res, out = apply(RemoveIdentity(), m, PassContext(site_filter={first}))
    assert res.sites == [first]
    assert ops(out).count("Identity") == 1
    assert_identical(m, out)
