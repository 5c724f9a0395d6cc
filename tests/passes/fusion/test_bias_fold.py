"""fold-bias: per-channel Add/Mul/Sub/Div folded into Conv/Gemm weights and biases."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.bias_fold import FoldBias
from tests.helpers import apply, assert_close, counts, parse, unchanged

R = np.random.default_rng(1)


HDR = '<ir_version: 8, opset_import: ["": 17]>'


W = {
    "w": R.standard_normal((4, 3, 3, 3)).astype(np.float32),
    "cb": R.standard_normal(4).astype(np.float32),
}


CONV_ARITH = (
    HDR
    + """
g (float[1,3,8,8] x) => (float[1,4,6,6] y) {
  c = Conv<kernel_shape=[3,3]>(x, w, cb)
  a = Add(k1, c)
  b = Mul(a, k2)
  d = Sub(b, k3)
  y = Div(d, k4)
}"""
)


def test_conv_per_channel_arith_folds():
    inits = {
        **W,
        "k1": R.standard_normal((4, 1, 1)).astype(np.float32),
        "k2": R.uniform(1, 2, (1, 4, 1, 1)).astype(np.float32),
        "k3": np.float32(0.3),
        "k4": R.uniform(1, 2, (4, 1, 1)).astype(np.float32),
    }
    m = parse(CONV_ARITH, inits)
    res, out = apply(FoldBias, m)
    assert res.details["counts"] == {"conv_bias": 4}
    assert counts(out) == {"Conv": 1}
    assert_close(m, out)


def test_conv_arith_negative_spatial_constant():
    inits = {
        **W,
        "k1": R.standard_normal((1, 6, 6)).astype(np.float32),
        "k2": np.float32(2),
        "k3": np.float32(0),
        "k4": np.float32(1),
    }
    text = (
        HDR
        + """
    g (float[1,3,8,8] x) => (float[1,4,6,6] y) { c = Conv<kernel_shape=[3,3]>(x, w, cb)
      y = Add(c, k1) }"""
    )
    res = unchanged(parse(text, inits), FoldBias)
    assert any("per output channel" in n for n in res.notes)


def test_conv_mul_negative_shared_weight():
    text = (
        HDR
        + """
    g (float[1,3,8,8] x) => (float[1,4,6,6] y, float[1,4,6,6] z) {
      c = Conv<kernel_shape=[3,3]>(x, w, cb)
      y = Mul(c, k)
      z = Conv<kernel_shape=[3,3]>(x, w)
    }"""
    )
    unchanged(parse(text, {**W, "k": R.standard_normal((4, 1, 1)).astype(np.float32)}), FoldBias)


def test_gemm_add_folds_into_c():
    text = (
        HDR
        + """
    g (float[2,5] x) => (float[2,3] y) { a = Gemm<transB=1, beta=2.0>(x, w, c)  y = Add(a, k) }"""
    )
    m = parse(
        text,
        {
            "w": R.standard_normal((3, 5)).astype(np.float32),
            "c": R.standard_normal(3).astype(np.float32),
            "k": R.standard_normal((1, 3)).astype(np.float32),
        },
    )
    res, out = apply(FoldBias, m)
    assert counts(out) == {"Gemm": 1}
    assert_close(m, out)
