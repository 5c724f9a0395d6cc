"""dead-code: nodes and initializers nothing reads removed."""

from __future__ import annotations

from onnxopt.passes.cleanup import DeadCode
from tests.helpers import apply, assert_identical, ops, parse

HEAD = '<ir_version: 8, opset_import: ["": 17]>'


def test_dead_nodes_and_initializers_removed() -> None:
    m = parse(
        HEAD
        + """
    g (float[2] x, float[2] unused) => (float[2] y) <float[2] w = {1, 2}, float[2] v = {3, 4}> {
      y = Add(x, w)
      dead = Mul(x, v)
      dead2 = Relu(dead)
    }"""
    )
    res, out = apply(DeadCode(), m)
    assert res.changed and res.details == {"nodes": 2, "initializers": 1}
    assert ops(out) == ["Add"]
    assert [i.name for i in out.graph.input] == ["x", "unused"]
    assert_identical(m, out)


def test_live_graph_unchanged() -> None:
    m = parse(
        HEAD
        + """
    g (float[2] x) => (float[2] y) <float[2] w = {1, 2}> { y = Add(x, w) }"""
    )
    res, out = apply(DeadCode(), m)
    assert not res.changed and res.model is None


def test_initializer_nothing_ever_read_is_counted() -> None:
    m = parse(
        HEAD
        + """
    g (float[2] x) => (float[2] y) <float[2] w = {1, 2}, float[2] never = {5, 6}> {
      y = Add(x, w)
    }"""
    )
    res, out = apply(DeadCode(), m)
    assert res.changed and res.details == {"nodes": 0, "initializers": 1}
    assert [t.name for t in out.graph.initializer] == ["w"]
    assert_identical(m, out)


def test_an_overridable_initializer_whose_readers_die_stays_an_input() -> None:
    """``c`` is an initializer and a graph input (a default callers may override); only a dead
    branch reads it. The dead nodes go, but ``c`` stays an input with its default: callers
    feed it by name, and onnxruntime refuses an input name the model does not declare
    (found by the lossy fuzz run, seed 40398)."""
    import numpy as np

    from tests.helpers import run

    m = parse(
        HEAD
        + """
    g (float[2] x, float[2] c) => (float[2] y) <float[2] c = {3, 4}> {
      y = Relu(x)
      dead = Mul(c, x)
    }"""
    )
    res, out = apply(DeadCode(), m)
    assert res.changed and res.details == {"nodes": 1, "initializers": 0}
    assert [i.name for i in out.graph.input] == ["x", "c"]
    assert [t.name for t in out.graph.initializer] == ["c"]
    x = np.array([-1.0, 2.0], np.float32)
    np.testing.assert_array_equal(run(out, {"x": x, "c": x})[0], [0.0, 2.0])
