"""fold-shapes: static Shape/Size and the shape arithmetic after them folded."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnxopt.passes.cleanup import FoldShapes
from tests.helpers import apply, assert_identical, ops, parse

HEAD = '<ir_version: 8, opset_import: ["": 17]>'


def test_shape_gather_concat_reshape_folded() -> None:
    m = parse(
        HEAD
        + """
    g (float[2,3,4] x) => (float[2,12] y) {
      s = Shape(x)
      i0 = Constant<value = int64[1] {0}>()
      d0 = Gather<axis = 0>(s, i0)
      m1 = Constant<value = int64[1] {-1}>()
      t = Concat<axis = 0>(d0, m1)
      y = Reshape(x, t)
    }"""
    )
    res, out = apply(FoldShapes(), m)
    assert res.changed and res.rewrites == 1
    assert ops(out) == ["Reshape"]
    shape = numpy_helper.to_array(out.graph.initializer[0])
    np.testing.assert_array_equal(shape, [2, -1])
    assert_identical(m, out)


def test_gather_of_partially_dynamic_shape() -> None:
    m = parse(
        HEAD
        + """
    g (float[N,3,4] x) => (float[N,12] y) {
      s = Shape(x)
      i = Constant<value = int64[2] {1, 2}>()
      d = Gather<axis = 0>(s, i)
      p = ReduceProd<keepdims = 1>(d)
      m1 = Constant<value = int64[1] {-1}>()
      t = Concat<axis = 0>(m1, p)
      y = Reshape(x, t)
    }"""
    )
    res, out = apply(FoldShapes(), m)
    assert res.changed
    assert ops(out) == ["Reshape"]
    assert_identical(m, out)


def test_shape_start_end_and_size_outputs() -> None:
    m = parse(
        HEAD
        + """
    g (float[2,3,4] x) => (int64[2] s, int64 n) {
      s = Shape<start = -2>(x)
      n = Size(x)
    }"""
    )
    res, out = apply(FoldShapes(), m)
    assert res.rewrites == 2
    assert ops(out) == ["Constant", "Constant"]
    assert [o.name for o in out.graph.output] == ["s", "n"]
    assert_identical(m, out)


def test_dynamic_shape_untouched() -> None:
    m = parse(
        HEAD
        + """
    g (float[N,3] x) => (float[N,3] y) {
      s = Shape(x)
      i = Constant<value = int64[1] {0}>()
      d = Gather<axis = 0>(s, i)
      m1 = Constant<value = int64[1] {3}>()
      t = Concat<axis = 0>(d, m1)
      y = Reshape(x, t)
    }"""
    )
    res, out = apply(FoldShapes(), m)
    assert not res.changed
    assert sorted(ops(out)) == sorted(ops(m))
