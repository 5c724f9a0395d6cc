"""remove-noops: Reshape/Cast/Expand/Slice/... that do nothing removed."""

from __future__ import annotations

import pytest

from onnxopt.passes.cleanup import RemoveNoops
from tests.helpers import apply, assert_identical, ops, parse

HEAD = '<ir_version: 8, opset_import: ["": 17]>'


NOOPS = {
    "Cast": "b = Cast<to = 1>(a)",
    "CastLike": "b = CastLike(a, a)",
    "Transpose": "b = Transpose<perm = [0, 1, 2]>(a)",
    "Reshape": "s = Constant<value = int64[3] {0, -1, 4}>()\n b = Reshape(a, s)",
    "Expand": "s = Constant<value = int64[2] {3, 1}>()\n b = Expand(a, s)",
    "Tile": "r = Constant<value = int64[3] {1, 1, 1}>()\n b = Tile(a, r)",
    "Slice": (
        "st = Constant<value = int64[2] {0, 0}>()\n en = Constant<value = int64[2] "
        "{9223372036854775807, 3}>()\n ax = Constant<value = int64[2] {2, 1}>()\n"
        " b = Slice(a, st, en, ax)"
    ),
    "Pad": "p = Constant<value = int64[6] {0, 0, 0, 0, 0, 0}>()\n b = Pad(a, p)",
    "Concat": "b = Concat<axis = 0>(a)",
    "Sum": "b = Sum(a)",
    "Mean": "b = Mean(a)",
}


def _model(body: str) -> str:
    return (
        HEAD
        + f"""
    g (float[2,3,4] x) => (float[2,3,4] y) {{
      a = Relu(x)
      {body}
      y = Neg(b)
    }}"""
    )


@pytest.mark.parametrize("op", sorted(NOOPS))
def test_noop_removed(op: str) -> None:
    m = parse(_model(NOOPS[op]))
    res, out = apply(RemoveNoops(), m)
    assert res.changed and res.rewrites == 1, res.notes
    assert op not in ops(out)
    assert_identical(m, out)


REAL = {
    "Cast": "b = Cast<to = 10>(a)\n c = Cast<to = 1>(b)",
    "Transpose": "b = Transpose<perm = [0, 2, 1]>(a)\n c = Transpose<perm = [0, 2, 1]>(b)",
    "Reshape": "s = Constant<value = int64[2] {6, 4}>()\n c = Reshape(a, s)",
    "Expand": "s = Constant<value = int64[4] {2, 2, 3, 4}>()\n c = Expand(a, s)",
    "Slice": (
        "st = Constant<value = int64[1] {1}>()\n en = Constant<value = int64[1] {3}>()\n"
        " ax = Constant<value = int64[1] {1}>()\n c = Slice(a, st, en, ax)"
    ),
    "Pad": "p = Constant<value = int64[6] {0, 0, 1, 0, 0, 0}>()\n c = Pad(a, p)",
}


@pytest.mark.parametrize("op", sorted(REAL))
def test_real_op_kept(op: str) -> None:
    m = parse(
        HEAD
        + f"""
    g (float[2,3,4] x) => (float[?,?] y) {{
      a = Relu(x)
      {REAL[op]}
      y = Flatten<axis = 0>(c)
    }}"""
    )
    res, out = apply(RemoveNoops(), m)
    assert not res.changed
    assert sorted(ops(out)) == sorted(ops(m))


def test_dynamic_shape_reshape_kept() -> None:
    m = parse(
        HEAD
        + """
    g (float[N,4] x) => (float[N,4] y) {
      s = Constant<value = int64[2] {-1, 4}>()
      y0 = Reshape(x, s)
      y = Relu(y0)
    }"""
    )
    res, out = apply(RemoveNoops(), m)
    assert not res.changed and "Reshape" in ops(out)


def test_noop_feeding_graph_output_keeps_name() -> None:
    m = parse(
        HEAD
        + """
    g (float[2,3] x) => (float[2,3] y) {
      a = Relu(x)
      y = Cast<to = 1>(a)
    }"""
    )
    res, out = apply(RemoveNoops(), m)
    assert res.changed and ops(out) == ["Relu"]
    assert out.graph.node[0].output[0] == "y"
    assert_identical(m, out)
