"""fuse-layout and remove-arith-noop."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.arith_noop import RemoveArithNoop
from onnxopt.passes.fusion.layout import FuseLayout
from tests.passes.test_fusion_pattern import apply, assert_same, make, ops, unchanged

HDR = '<ir_version: 8, opset_import: ["": 17]>'


def test_transposes_merge_and_cancel():
    text = HDR + """
    g (float[2,3,4] x) => (float[4,2,3] y, float[2,3,4] z) {
      a = Transpose<perm=[1,0,2]>(x)
      y = Transpose<perm=[2,1,0]>(a)
      b = Transpose<perm=[2,0,1]>(x)
      c = Transpose<perm=[1,2,0]>(b)
      z = Neg(c)
    }"""
    m = make(text)
    res, out = apply(m, FuseLayout)
    assert res.details["counts"] == {"transpose_transpose": 2}
    assert ops(out) == {"Transpose": 1, "Neg": 1}
    assert_same(m, out)


def test_reshape_chain_and_squeeze_pairs():
    text = HDR + """
    g (float[2,3,4] x) => (float[4,6] y, float[2,3,4] z, float[2,3,4] w) {
      f = Flatten<axis=1>(x)
      y = Reshape(f, s)
      u = Unsqueeze(x, ax)
      z = Squeeze(u, ax)
      q = Squeeze(u, ax)
      w = Unsqueeze(q, axn)
    }"""
    m = make(text, {"s": np.array([4, 6], np.int64), "ax": np.array([1], np.int64),
                    "axn": np.array([-3], np.int64)})
    res, out = apply(m, FuseLayout)
    assert ops(out)["Reshape"] == 1 and "Flatten" not in ops(out)
    assert res.details["counts"]["reshape_chain"] == 1
    assert_same(m, out)


def test_layout_negative_cases():
    text = HDR + """
    g (float[2,3,4] x) => (float[2,3,4] z, float[2,1,3,4] u, float[2,12] y) {
      u = Unsqueeze(x, ax)
      z = Squeeze(u, ax)
      r = Reshape(x, s0)
      y = Reshape(r, s)
    }"""
    m = make(text, {"ax": np.array([1], np.int64), "s0": np.array([6, 4], np.int64),
                    "s": np.array([2, 0], np.int64)})
    res = unchanged(m, FuseLayout)
    assert any("graph output" in n for n in res.notes)
    assert any("copies a dimension" in n for n in res.notes)
    text2 = HDR + """
    g (float[2,1,3] x) => (float[2,1,3] z) { u = Unsqueeze(x, a1)  z = Squeeze(u, a2) }"""
    m2 = make(text2, {"a1": np.array([1], np.int64), "a2": np.array([2], np.int64)})
    assert any("axes differ" in n for n in unchanged(m2, FuseLayout).notes)


def test_arith_noops_removed():
    text = HDR + """
    g (float[2,3] x) => (float[2,3] y) {
      a = Mul(one, x)
      b = Add(a, zero)
      c = Div(b, one)
      d = Sub(c, zero)
      y = Relu(d)
    }"""
    m = make(text, {"one": np.ones((1, 3), np.float32), "zero": np.float32(0)})
    res, out = apply(m, RemoveArithNoop)
    assert res.details["counts"] == {"arith_noop": 4}
    assert ops(out) == {"Relu": 1}
    assert_same(m, out)


def test_arith_noop_negative_broadcast_and_non_identity():
    text = HDR + """
    g (float[3] x) => (float[2,3] y, float[3] z, float[3] w) {
      y = Mul(x, one)
      z = Sub(zero3, x)
      w = Div(one3, x)
    }"""
    m = make(text, {"one": np.ones((2, 3), np.float32), "zero3": np.zeros(3, np.float32),
                    "one3": np.ones(3, np.float32)})
    res = unchanged(m, RemoveArithNoop)
    assert any("broadcast" in n for n in res.notes)


def test_arith_noop_keeps_graph_output_fed_by_input():
    text = HDR + """
    g (float[3] x) => (float[3] y) { y = Add(x, zero) }"""
    unchanged(make(text, {"zero": np.zeros(3, np.float32)}), RemoveArithNoop)
