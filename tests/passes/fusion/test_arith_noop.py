"""remove-arith-noop: x*1, x+0, x/1, x-0 removed where the broadcast is an identity."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.arith_noop import RemoveArithNoop
from tests.helpers import apply, assert_close, counts, parse, unchanged

HDR = '<ir_version: 8, opset_import: ["": 17]>'


def test_arith_noops_removed():
    text = (
        HDR
        + """
    g (float[2,3] x) => (float[2,3] y) {
      a = Mul(one, x)
      b = Add(a, zero)
      c = Div(b, one)
      d = Sub(c, zero)
      y = Relu(d)
    }"""
    )
    m = parse(text, {"one": np.ones((1, 3), np.float32), "zero": np.float32(0)})
    res, out = apply(RemoveArithNoop, m)
    assert res.details["counts"] == {"arith_noop": 4}
    assert counts(out) == {"Relu": 1}
    assert_close(m, out)


def test_arith_noop_negative_broadcast_and_non_identity():
    text = (
        HDR
        + """
    g (float[3] x) => (float[2,3] y, float[3] z, float[3] w) {
      y = Mul(x, one)
      z = Sub(zero3, x)
      w = Div(one3, x)
    }"""
    )
    m = parse(
        text,
        {
            "one": np.ones((2, 3), np.float32),
            "zero3": np.zeros(3, np.float32),
            "one3": np.ones(3, np.float32),
        },
    )
    res = unchanged(m, RemoveArithNoop)
    assert any("broadcast" in n for n in res.notes)


def test_arith_noop_keeps_graph_output_fed_by_input():
    text = (
        HDR
        + """
    g (float[3] x) => (float[3] y) { y = Add(x, zero) }"""
    )
    unchanged(parse(text, {"zero": np.zeros(3, np.float32)}), RemoveArithNoop)
