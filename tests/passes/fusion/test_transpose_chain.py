"""Transpose pairs around elementwise chains cancel (the NHWC round trips of Keras exports)."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.layout import FuseLayout
from tests.helpers import apply, assert_close, counts, parse, unchanged

R = np.random.default_rng(0)
HDR = '<ir_version: 8, opset_import: ["": 17]>'

KERAS = (
    HDR
    + """
g (float[2,4,5,5] x) => (float[2,4,5,5] y) {
  t = Transpose <perm = [0, 2, 3, 1]> (x)
  a = Add(t, bias)
  r = Relu(a)
  s = Sub(r, mean)
  m = Mul(s, scale)
  y = Transpose <perm = [0, 3, 1, 2]> (m)
}"""
)


def inits():
    return {
        "bias": R.standard_normal(4).astype(np.float32),
        "mean": R.standard_normal((1, 1, 1, 4)).astype(np.float32),
        "scale": np.float32(1.5),
    }


def test_keras_nhwc_round_trip_cancels():
    m = parse(KERAS, inits())
    res, out = apply(FuseLayout, m)
    assert res.details["counts"] == {"transpose_chain": 1}
    assert counts(out) == {"Add": 1, "Relu": 1, "Sub": 1, "Mul": 1}
    assert_close(m, out, rtol=0, atol=0)


def test_constant_on_the_left_and_prelu():
    m = parse(
        HDR
        + """
    g (float[1,3,4,2] x) => (float[1,3,4,2] y) {
      t = Transpose <perm = [0, 2, 3, 1]> (x)
      d = Div(c, t)
      p = PRelu(d, slope)
      y = Transpose <perm = [0, 3, 1, 2]> (p)
    }""",
        {
            "c": R.uniform(1, 2, (1, 1, 1, 3)).astype(np.float32),
            "slope": R.uniform(0, 1, 3).astype(np.float32),
        },
    )
    res, out = apply(FuseLayout, m)
    assert counts(out) == {"Div": 1, "PRelu": 1}
    assert_close(m, out, rtol=0, atol=0)


def test_negative_cases_left_alone():
    used_twice = (
        HDR
        + """
    g (float[2,4,5,5] x) => (float[2,4,5,5] y, float[2,5,5,4] z) {
      t = Transpose <perm = [0, 2, 3, 1]> (x)
      z = Relu(t)
      y = Transpose <perm = [0, 3, 1, 2]> (z)
    }"""
    )
    unchanged(parse(used_twice), FuseLayout)  # the intermediate is a graph output
    not_inverse = (
        HDR
        + """
    g (float[2,4,5,5] x) => (float[2,5,4,5] y) {
      t = Transpose <perm = [0, 2, 3, 1]> (x)
      r = Relu(t)
      y = Transpose <perm = [0, 1, 3, 2]> (r)
    }"""
    )
    unchanged(parse(not_inverse), FuseLayout)
    variable = (
        HDR
        + """
    g (float[2,4,5,5] x, float[2,5,5,4] v) => (float[2,4,5,5] y) {
      t = Transpose <perm = [0, 2, 3, 1]> (x)
      a = Add(t, v)
      y = Transpose <perm = [0, 3, 1, 2]> (a)
    }"""
    )
    res = unchanged(parse(variable), FuseLayout)
    assert not any("transpose_chain" in n for n in res.notes)  # not applicable: silent
