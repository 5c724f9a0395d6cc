"""fold-bias, fuse-gemm and fold-pad."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.bias_fold import FoldBias
from onnxopt.passes.fusion.gemm import FuseGemm
from onnxopt.passes.fusion.pad_fold import FoldPad
from tests.passes.test_fusion_pattern import apply, assert_same, make, ops, unchanged

R = np.random.default_rng(1)
HDR = '<ir_version: 8, opset_import: ["": 17]>'
W = {"w": R.standard_normal((4, 3, 3, 3)).astype(np.float32),
     "cb": R.standard_normal(4).astype(np.float32)}

CONV_ARITH = HDR + """
g (float[1,3,8,8] x) => (float[1,4,6,6] y) {
  c = Conv<kernel_shape=[3,3]>(x, w, cb)
  a = Add(k1, c)
  b = Mul(a, k2)
  d = Sub(b, k3)
  y = Div(d, k4)
}"""


def test_conv_per_channel_arith_folds():
    inits = {**W, "k1": R.standard_normal((4, 1, 1)).astype(np.float32),
             "k2": R.uniform(1, 2, (1, 4, 1, 1)).astype(np.float32),
             "k3": np.float32(0.3), "k4": R.uniform(1, 2, (4, 1, 1)).astype(np.float32)}
    m = make(CONV_ARITH, inits)
    res, out = apply(m, FoldBias)
    assert res.details["counts"] == {"conv_bias": 4}
    assert ops(out) == {"Conv": 1}
    assert_same(m, out)


def test_conv_arith_negative_spatial_constant():
    inits = {**W, "k1": R.standard_normal((1, 6, 6)).astype(np.float32),
             "k2": np.float32(2), "k3": np.float32(0), "k4": np.float32(1)}
    text = HDR + """
    g (float[1,3,8,8] x) => (float[1,4,6,6] y) { c = Conv<kernel_shape=[3,3]>(x, w, cb)
      y = Add(c, k1) }"""
    res = unchanged(make(text, inits), FoldBias)
    assert any("per output channel" in n for n in res.notes)


def test_conv_mul_negative_shared_weight():
    text = HDR + """
    g (float[1,3,8,8] x) => (float[1,4,6,6] y, float[1,4,6,6] z) {
      c = Conv<kernel_shape=[3,3]>(x, w, cb)
      y = Mul(c, k)
      z = Conv<kernel_shape=[3,3]>(x, w)
    }"""
    unchanged(make(text, {**W, "k": R.standard_normal((4, 1, 1)).astype(np.float32)}), FoldBias)


def test_gemm_add_folds_into_c():
    text = HDR + """
    g (float[2,5] x) => (float[2,3] y) { a = Gemm<transB=1, beta=2.0>(x, w, c)  y = Add(a, k) }"""
    m = make(text, {"w": R.standard_normal((3, 5)).astype(np.float32),
                    "c": R.standard_normal(3).astype(np.float32),
                    "k": R.standard_normal((1, 3)).astype(np.float32)})
    res, out = apply(m, FoldBias)
    assert ops(out) == {"Gemm": 1}
    assert_same(m, out)


MM_ADD = HDR + """
g (float[2,5] x) => (float[2,3] y) { a = MatMul(x, w)  y = Add(%s) }"""


def test_matmul_add_becomes_gemm():
    for order in ("a, b", "b, a"):
        m = make(MM_ADD % order, {"w": R.standard_normal((5, 3)).astype(np.float32),
                                  "b": R.standard_normal(3).astype(np.float32)})
        res, out = apply(m, FuseGemm)
        assert ops(out) == {"Gemm": 1}
        assert_same(m, out)


def test_matmul_add_negative_3d_and_graph_output():
    text = HDR + """
    g (float[2,4,5] x) => (float[2,4,3] y) { a = MatMul(x, w)  y = Add(a, b) }"""
    inits = {"w": R.standard_normal((5, 3)).astype(np.float32),
             "b": R.standard_normal(3).astype(np.float32)}
    res = unchanged(make(text, inits), FuseGemm)
    assert any("2-D" in n for n in res.notes)
    text2 = HDR + """
    g (float[2,5] x) => (float[2,3] y, float[2,3] a) { a = MatMul(x, w)  y = Add(a, b) }"""
    unchanged(make(text2, inits), FuseGemm)


def test_transpose_into_gemm():
    text = HDR + """
    g (float[5,2] x) => (float[2,3] y) {
      t = Transpose<perm=[1,0]>(x)
      u = Transpose<perm=[1,0]>(w)
      y = Gemm(t, u, c)
    }"""
    m = make(text, {"w": R.standard_normal((3, 5)).astype(np.float32),
                    "c": R.standard_normal(3).astype(np.float32)})
    res, out = apply(m, FuseGemm)
    assert ops(out) == {"Gemm": 1}
    attrs = {a.name: a.i for a in out.graph.node[0].attribute}
    assert attrs["transA"] == 1 and attrs["transB"] == 1
    assert_same(m, out)


def test_transpose_gemm_negative_used_elsewhere():
    text = HDR + """
    g (float[5,2] x) => (float[2,3] y, float[2,5] t) { t = Transpose<perm=[1,0]>(x)
      y = Gemm(t, w) }"""
    unchanged(make(text, {"w": R.standard_normal((5, 3)).astype(np.float32)}), FuseGemm)


PAD_CONV = '<ir_version: 8, opset_import: ["": 17]>' + """
g (float[1,3,8,8] x) => (float[1,4,%d,%d] y) {
  p = Pad<mode="%s">(x, pads%s)
  y = %s(p, w, cb)
}"""


def test_pad_into_conv_and_avgpool():
    pads = np.array([0, 0, 1, 2, 0, 0, 3, 1], np.int64)
    m = make(PAD_CONV % (12, 9, "constant", "", "Conv<kernel_shape=[3,3], pads=[1,0,1,0]>"),
             {**W, "pads": pads})
    res, out = apply(m, FoldPad)
    assert ops(out) == {"Conv": 1}
    assert_same(m, out)
    text = HDR + """
    g (float[1,3,8,8] x) => (float[1,3,9,9] y) {
      p = Pad(x, pads)
      y = AveragePool<kernel_shape=[2,2], count_include_pad=1>(p) }"""
    m = make(text, {"pads": np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64)})
    res, out = apply(m, FoldPad)
    assert ops(out) == {"AveragePool": 1}
    assert_same(m, out)


def test_pad_negative_value_mode_maxpool():
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    m = make(PAD_CONV % (8, 8, "constant", ", v", "Conv<kernel_shape=[3,3]>"),
             {**W, "pads": pads, "v": np.float32(1.0)})
    assert any("not 0" in n for n in unchanged(m, FoldPad).notes)
    m = make(PAD_CONV % (8, 8, "reflect", "", "Conv<kernel_shape=[3,3]>"), {**W, "pads": pads})
    unchanged(m, FoldPad)
    text = HDR + """
    g (float[1,3,8,8] x) => (float[1,3,9,9] y) { p = Pad(x, pads)
      y = MaxPool<kernel_shape=[2,2]>(p) }"""
    assert any("MaxPool" in n for n in unchanged(make(text, {"pads": pads}), FoldPad).notes)
