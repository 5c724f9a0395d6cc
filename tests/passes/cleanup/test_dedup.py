"""dedup-initializers: equal initializers shared."""

from __future__ import annotations

from onnxopt.passes.cleanup import DedupInitializers
from tests.helpers import apply, assert_identical, parse

HEAD = '<ir_version: 8, opset_import: ["": 17]>'


def test_identical_merged_others_kept() -> None:
    m = parse(
        HEAD
        + """
    g (float[4] x) => (float[4] y)
      <float[4] a = {1, 2, 3, 4}, float[4] b = {1, 2, 3, 4}, float[2,2] c = {1, 2, 3, 4},
       int32[4] d = {1065353216, 1073741824, 1077936128, 1082130432}, float[4] e = {1, 2, 3, 5}> {
      p = Add(x, a)
      q = Add(p, b)
      s = Constant<value = int64[2] {2, 2}>()
      cr = Reshape(q, s)
      r = Add(cr, c)
      f = Flatten<axis = 0>(r)
      n = Constant<value = int64[1] {4}>()
      g2 = Reshape(f, n)
      dc = Cast<to = 1>(d)
      h = Add(g2, dc)
      y = Add(h, e)
    }"""
    )
    res, out = apply(DedupInitializers(), m)
    assert res.rewrites == 1 and res.sites == ["b"]
    names = sorted(i.name for i in out.graph.initializer)
    assert names == ["a", "c", "d", "e"]
    assert_identical(m, out)


def test_no_duplicates_unchanged() -> None:
    m = parse(
        HEAD
        + """
    g (float[2] x) => (float[2] y) <float[2] a = {1, 2}, float[2] b = {2, 1}> {
      p = Add(x, a)
      y = Add(p, b)
    }"""
    )
    res, out = apply(DedupInitializers(), m)
    assert not res.changed and len(out.graph.initializer) == 2


def test_uses_inside_subgraphs_follow_and_subgraphs_are_found_once(monkeypatch) -> None:
    """Duplicates read inside If branches too are routed to the survivor there; the
    graph's subgraphs are collected once per pass, not once per merged initializer."""
    from onnxopt.passes.cleanup import dedup

    calls = []
    real = dedup.subgraphs
    monkeypatch.setattr(dedup, "subgraphs", lambda g: calls.append(1) or real(g))
    m = parse(
        HEAD
        + """
    g (float[4] x, bool c) => (float[4] y)
      <float[4] a = {1, 2, 3, 4}, float[4] b = {1, 2, 3, 4},
       float[4] k = {5, 6, 7, 8}, float[4] m = {5, 6, 7, 8}> {
      p = Add(x, a)
      q = Add(p, b)
      r = Mul(q, k)
      s = Sub(r, m)
      y = If(c) <then_branch = g1 () => (float[4] t) { t = Add(s, b) },
                 else_branch = g2 () => (float[4] e) { e = Mul(s, m) }>
    }"""
    )
    res, out = apply(DedupInitializers(), m)
    assert sorted(res.sites) == ["b", "m"] and len(calls) == 1
    assert sorted(i.name for i in out.graph.initializer) == ["a", "k"]
    branches = {a.name: a.g for a in out.graph.node[-1].attribute}
    assert list(branches["then_branch"].node[0].input) == ["s", "a"]
    assert list(branches["else_branch"].node[0].input) == ["s", "k"]
    assert_identical(m, out)
