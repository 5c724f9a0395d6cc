"""fuse-gemm: MatMul+Add and Transpose into Gemm."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.gemm import FuseGemm
from tests.helpers import apply, assert_close, counts, parse, unchanged

R = np.random.default_rng(1)


HDR = '<ir_version: 8, opset_import: ["": 17]>'


MM_ADD = (
    HDR
    + """
g (float[2,5] x) => (float[2,3] y) { a = MatMul(x, w)  y = Add(%s) }"""
)


def test_matmul_add_becomes_gemm():
    for order in ("a, b", "b, a"):
        m = parse(
            MM_ADD % order,
            {
                "w": R.standard_normal((5, 3)).astype(np.float32),
                "b": R.standard_normal(3).astype(np.float32),
            },
        )
        res, out = apply(FuseGemm, m)
        assert counts(out) == {"Gemm": 1}
        assert_close(m, out)


def test_matmul_add_negative_3d_and_graph_output():
    text = (
        HDR
        + """
    g (float[2,4,5] x) => (float[2,4,3] y) { a = MatMul(x, w)  y = Add(a, b) }"""
    )
    inits = {
        "w": R.standard_normal((5, 3)).astype(np.float32),
        "b": R.standard_normal(3).astype(np.float32),
    }
    res = unchanged(parse(text, inits), FuseGemm)
    assert any("2-D" in n for n in res.notes)
    text2 = (
        HDR
        + """
    g (float[2,5] x) => (float[2,3] y, float[2,3] a) { a = MatMul(x, w)  y = Add(a, b) }"""
    )
    unchanged(parse(text2, inits), FuseGemm)


def test_transpose_into_gemm():
    text = (
        HDR
        + """
    g (float[5,2] x) => (float[2,3] y) {
      t = Transpose<perm=[1,0]>(x)
      u = Transpose<perm=[1,0]>(w)
      y = Gemm(t, u, c)
    }"""
    )
    m = parse(
        text,
        {
            "w": R.standard_normal((3, 5)).astype(np.float32),
            "c": R.standard_normal(3).astype(np.float32),
        },
    )
    res, out = apply(FuseGemm, m)
    assert counts(out) == {"Gemm": 1}
    attrs = {a.name: a.i for a in out.graph.node[0].attribute}
    assert attrs["transA"] == 1 and attrs["transB"] == 1
    assert_close(m, out)


def test_transpose_gemm_negative_used_elsewhere():
    text = (
        HDR
        + """
    g (float[5,2] x) => (float[2,3] y, float[2,5] t) { t = Transpose<perm=[1,0]>(x)
      y = Gemm(t, w) }"""
    )
    unchanged(parse(text, {"w": R.standard_normal((5, 3)).astype(np.float32)}), FuseGemm)


def test_row_bias_becomes_a_vector():
    # skl2onnx writes MLP intercepts as [1, N]: the Gemm gets the [N] bias int8 needs
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
    g (float[3,4] x) => (float[3,5] y) { h = MatMul(x, w)  y = Add(h, c) }""",
        {"w": np.ones((4, 5), np.float32), "c": np.arange(5, dtype=np.float32).reshape(1, 5)},
    )
    res, out = apply(FuseGemm, m)
    assert counts(out) == {"Gemm": 1}
    bias = next(t for t in out.graph.initializer if t.name == out.graph.node[0].input[2])
    assert list(bias.dims) == [5]
    assert_close(m, out)


def test_matmul_added_to_itself_is_not_its_own_bias():
    """Found by fuzzing: in ``Add(y, y)`` with ``y = MatMul(a, w)`` the pattern bound ``y``
    as the bias too, and the Gemm read the MatMul output it replaced (an invalid graph)."""
    m = parse(
        HDR
        + """
    g (float[2,3] a) => (float[2,4] z) {
      y = MatMul(a, w)
      z = Add(y, y)
    }""",
        {"w": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)},
    )
    res = unchanged(m, FuseGemm)
    assert any("computed inside the match" in n for n in res.notes)
