"""Contrib fusions (--target onnxruntime): SkipLayerNormalization, Gelu family, FusedMatMul."""

from __future__ import annotations

import math

import numpy as np

from onnxopt.passes.fusion.ort_gelu import OrtFuseGelu
from onnxopt.passes.fusion.ort_layernorm import OrtFuseSkipLayerNorm
from onnxopt.passes.fusion.ort_matmul import OrtFuseMatMul
from tests.passes.test_fusion_norm_act import G_INITS, GELU_DYN_TANH, GELU_TS
from tests.passes.test_fusion_pattern import apply, assert_same, make, ops, unchanged

R = np.random.default_rng(3)
HDR = '<ir_version: 9, opset_import: ["": 17]>'
ORT = "onnxruntime"

SKIP_LN = HDR + """
g (float[2,4,8] x, float[2,4,8] r) => (float[2,4,8] y) {
  m = MatMul(x, w)
  a = Add(m, bias)
  s = Add(r, a)
  y = LayerNormalization<axis=-1, epsilon=0.00001>(s, gamma, beta)
}"""
LN_INITS = {"w": R.standard_normal((8, 8)).astype(np.float32),
            "bias": R.standard_normal(8).astype(np.float32),
            "gamma": R.standard_normal(8).astype(np.float32),
            "beta": R.standard_normal(8).astype(np.float32)}


def test_skip_layernorm_with_bias():
    m = make(SKIP_LN, LN_INITS)
    res, out = apply(m, OrtFuseSkipLayerNorm, ORT)
    assert ops(out) == {"MatMul": 1, "SkipLayerNormalization": 1}
    assert any(o.domain == "com.microsoft" for o in out.opset_import)
    assert_same(m, out)


def test_skip_layernorm_needs_target_and_equal_shapes():
    m = make(SKIP_LN, LN_INITS)
    res = unchanged(m, OrtFuseSkipLayerNorm)
    assert any("--target onnxruntime" in n for n in res.notes)
    text = SKIP_LN.replace("float[2,4,8] r", "float[1,4,8] r")
    res = unchanged(make(text, LN_INITS), OrtFuseSkipLayerNorm, ORT)
    assert any("same" in n for n in res.notes)
    text = SKIP_LN.replace("=> (float[2,4,8] y)", "=> (float[2,4,8] y, float[2,4,8] s)")
    unchanged(make(text, LN_INITS), OrtFuseSkipLayerNorm, ORT)


def test_contrib_gelu_fastgelu_and_bias():
    for text, op in ((GELU_TS, "Gelu"), (GELU_DYN_TANH, "FastGelu")):
        m = make(text % 17, G_INITS)
        _, out = apply(m, OrtFuseGelu, ORT)
        assert ops(out) == {op: 1}
        assert_same(m, out)
    text = (GELU_TS % 17).replace("(float[2,8] x)", "(float[2,8] z)").replace(
        "{", "{ x = Add(z, gb)", 1)
    m = make(text, {**G_INITS, "gb": R.standard_normal(8).astype(np.float32)})
    res, out = apply(m, OrtFuseGelu, ORT)
    assert ops(out) == {"BiasGelu": 1}
    assert_same(m, out)


def test_contrib_gelu_negative_bias_shape_and_quickgelu():
    text = (GELU_TS % 17).replace("(float[2,8] x)", "(float[2,8] z)").replace(
        "{", "{ x = Add(z, gb)", 1)
    m = make(text, {**G_INITS, "gb": R.standard_normal((2, 8)).astype(np.float32)})
    res, out = apply(m, OrtFuseGelu, ORT)
    assert ops(out) == {"Gelu": 1, "Add": 1}
    assert any("not 1-D" in n for n in res.notes)
    silu = HDR + "g (float[2,8] x) => (float[2,8] y) { s = Sigmoid(x)  y = Mul(x, s) }"
    m = make(silu)
    _, out = apply(m, OrtFuseGelu, ORT)
    assert ops(out) == {"QuickGelu": 1}
    assert_same(m, out)


FMM = HDR + """
g (float[2,3,4,5] q, float[2,3,6,5] k) => (float[2,3,4,6] y) {
  qs = Mul(q, s)
  kt = Transpose<perm=[0,1,3,2]>(k)
  m = MatMul(qs, kt)
  y = Div(m, d)
}"""


def test_fused_matmul_transpose_and_scales():
    m = make(FMM, {"s": np.float32(0.5), "d": np.float32(math.sqrt(5))})
    res, out = apply(m, OrtFuseMatMul, ORT)
    assert ops(out) == {"FusedMatMul": 1}
    attrs = {a.name: (a.f if a.type == 1 else a.i) for a in out.graph.node[0].attribute}
    assert attrs["transB"] == 1 and abs(attrs["alpha"] - 0.5 / math.sqrt(5)) < 1e-6
    assert_same(m, out)


def test_fused_matmul_negative_batch_perm():
    text = HDR + """
    g (float[3,2,4,5] q, float[2,3,5,6] k) => (float[2,3,4,6] y) {
      qt = Transpose<perm=[1,0,2,3]>(q)
      y = MatMul(qt, k) }"""
    res = unchanged(make(text), OrtFuseMatMul, ORT)
    assert any("batch axes" in n for n in res.notes)
