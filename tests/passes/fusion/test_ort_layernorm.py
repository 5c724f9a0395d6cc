"""ort-fuse-skiplayernorm: Add + LayerNormalization -> com.microsoft.SkipLayerNormalization."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.ort_layernorm import OrtFuseSkipLayerNorm
from tests.helpers import apply, assert_close, counts, parse, unchanged

R = np.random.default_rng(3)


HDR = '<ir_version: 9, opset_import: ["": 17]>'


ORT = "onnxruntime"


SKIP_LN = (
    HDR
    + """
g (float[2,4,8] x, float[2,4,8] r) => (float[2,4,8] y) {
  m = MatMul(x, w)
  a = Add(m, bias)
  s = Add(r, a)
  y = LayerNormalization<axis=-1, epsilon=0.00001>(s, gamma, beta)
}"""
)


LN_INITS = {
    "w": R.standard_normal((8, 8)).astype(np.float32),
    "bias": R.standard_normal(8).astype(np.float32),
    "gamma": R.standard_normal(8).astype(np.float32),
    "beta": R.standard_normal(8).astype(np.float32),
}


def test_skip_layernorm_with_bias():
    m = parse(SKIP_LN, LN_INITS)
    res, out = apply(OrtFuseSkipLayerNorm, m, target=ORT)
    assert counts(out) == {"MatMul": 1, "SkipLayerNormalization": 1}
    assert any(o.domain == "com.microsoft" for o in out.opset_import)
    assert_close(m, out)


def test_skip_layernorm_needs_target_and_equal_shapes():
    m = parse(SKIP_LN, LN_INITS)
    res = unchanged(m, OrtFuseSkipLayerNorm)
    assert any("--target onnxruntime" in n for n in res.notes)
    text = SKIP_LN.replace("float[2,4,8] r", "float[1,4,8] r")
    res = unchanged(parse(text, LN_INITS), OrtFuseSkipLayerNorm, ORT)
    assert any("same" in n for n in res.notes)
    text = SKIP_LN.replace("=> (float[2,4,8] y)", "=> (float[2,4,8] y, float[2,4,8] s)")
    unchanged(parse(text, LN_INITS), OrtFuseSkipLayerNorm, ORT)
