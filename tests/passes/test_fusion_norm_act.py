"""fuse-layernorm, fuse-gelu and fuse-activations."""

from __future__ import annotations

import math

import numpy as np

from onnxopt.contract import PassContext
from onnxopt.graph import to_graph
from onnxopt.passes.fusion.activations import FuseActivations
from onnxopt.passes.fusion.gelu import FuseGelu
from onnxopt.passes.fusion.layernorm import FuseLayerNorm
from tests.passes.test_fusion_pattern import apply, assert_same, make, ops, unchanged

R = np.random.default_rng(2)

LN = """<ir_version: 8, opset_import: ["": %d]>
g (float[2,5,8] x) => (float[2,5,8] y) {
  m = ReduceMean<axes=[%s]>(x)
  d = Sub(x, m)
  p = %s
  v = ReduceMean<axes=[%s]>(p)
  e = Add(v, eps)
  s = Sqrt(e)
  n = Div(d, s)
  k = Mul(n, gamma)
  y = Add(beta, k)
}"""
LN_INITS = {"eps": np.float32(1e-5), "two": np.float32(2),
            "gamma": R.standard_normal(8).astype(np.float32),
            "beta": R.standard_normal(8).astype(np.float32)}


def test_decomposed_layernorm_fuses_both_square_forms():
    for square in ("Pow(d, two)", "Mul(d, d)"):
        m = make(LN % (17, "-1", square, "2"), LN_INITS)
        res, out = apply(m, FuseLayerNorm)
        assert ops(out) == {"LayerNormalization": 1}, res.notes
        assert res.details["counts"] == {"layernorm": 1, "layernorm_affine": 2}
        assert_same(m, out)


def test_layernorm_negative_cases():
    res = unchanged(make(LN % (17, "1", "Pow(d, two)", "1"), LN_INITS), FuseLayerNorm)
    assert any("trailing" in n for n in res.notes)
    res = unchanged(make(LN % (17, "-1", "Pow(d, two)", "1"), LN_INITS), FuseLayerNorm)
    assert any("axes differ" in n for n in res.notes)
    res = unchanged(make(LN % (13, "-1", "Pow(d, two)", "-1"), LN_INITS), FuseLayerNorm)
    assert any("opset >= 17" in n for n in res.notes)


GELU_TS = """<ir_version: 9, opset_import: ["": %d]>
g (float[2,8] x) => (float[2,8] y) {
  a = Div(x, sq2)
  b = Erf(a)
  c = Add(b, one)
  d = Mul(x, c)
  y = Mul(d, half)
}"""
GELU_DYN_TANH = """<ir_version: 9, opset_import: ["": %d]>
g (float[2,8] x) => (float[2,8] y) {
  p = Pow(x, three)
  q = Mul(k1, p)
  r = Add(x, q)
  s = Mul(k2, r)
  t = Tanh(s)
  u = Add(t, one)
  v = Mul(half, u)
  y = Mul(x, v)
}"""
G_INITS = {"sq2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5),
           "three": np.float32(3), "k1": np.float32(0.044715),
           "k2": np.float32(math.sqrt(2 / math.pi))}


def test_gelu_erf_and_tanh_fuse_at_opset20():
    for text, approx in ((GELU_TS, None), (GELU_DYN_TANH, "tanh")):
        m = make(text % 20, G_INITS)
        res, out = apply(m, FuseGelu)
        assert ops(out) == {"Gelu": 1}
        attrs = {a.name: a.s.decode() for a in out.graph.node[0].attribute}
        assert attrs.get("approximate") == approx
        assert_same(m, out)


def test_gelu_negative_opset_and_wrong_constant():
    res = unchanged(make(GELU_TS % 18, G_INITS), FuseGelu)
    assert any("opset >= 20" in n for n in res.notes)
    unchanged(make(GELU_TS % 20, {**G_INITS, "half": np.float32(0.6)}), FuseGelu)
    text = GELU_TS.replace("=> (float[2,8] y)", "=> (float[2,8] y, float[2,8] c)")
    res = unchanged(make(text % 20, G_INITS), FuseGelu)
    assert any("graph output" in n for n in res.notes)


HSWISH = """<ir_version: 8, opset_import: ["": 17]>
g (float[2,8] x) => (float[2,8] y) {
  a = Add(x, three)
  c = Clip(a, zero, six)
  h = Div(c, six)
  y = Mul(x, h)
}"""
A_INITS = {"three": np.float32(3), "zero": np.float32(0), "six": np.float32(6)}


def test_hardswish_and_hardsigmoid():
    m = make(HSWISH, A_INITS)
    res, out = apply(m, FuseActivations)
    assert ops(out) == {"HardSwish": 1}
    assert_same(m, out)
    m = make(HSWISH.replace("y = Mul(x, h)", "y = Neg(h)"), A_INITS)
    res, out = apply(m, FuseActivations)
    assert ops(out) == {"HardSigmoid": 1, "Neg": 1}
    assert_same(m, out)


def test_activation_negative_bounds_and_swish_opset():
    res = unchanged(make(HSWISH, {**A_INITS, "zero": np.float32(-1)}), FuseActivations)
    assert any("Clip bounds" in n for n in res.notes)
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2,8] x) => (float[2,8] y) { s = Sigmoid(x)  y = Mul(s, x) }"""
    unchanged(make(text), FuseActivations)  # Swish is opt-in (no onnxruntime kernel)
    res = FuseActivations(swish=True).run(to_graph(make(text)), PassContext())
    assert res.rewrites == 0 and any("opset >= 24" in n for n in res.notes)
