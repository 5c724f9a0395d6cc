"""fuse-layernorm: decomposed LayerNorm subgraphs -> LayerNormalization."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.layernorm import FuseLayerNorm
from tests.helpers import apply, assert_close, counts, parse, unchanged

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


LN_INITS = {
    "eps": np.float32(1e-5),
    "two": np.float32(2),
    "gamma": R.standard_normal(8).astype(np.float32),
    "beta": R.standard_normal(8).astype(np.float32),
}


def test_decomposed_layernorm_fuses_both_square_forms():
    for square in ("Pow(d, two)", "Mul(d, d)"):
        m = parse(LN % (17, "-1", square, "2"), LN_INITS)
        res, out = apply(FuseLayerNorm, m)
        assert counts(out) == {"LayerNormalization": 1}, res.notes
        assert res.details["counts"] == {"layernorm": 1, "layernorm_affine": 2}
        assert_close(m, out)


def test_layernorm_negative_cases():
    res = unchanged(parse(LN % (17, "1", "Pow(d, two)", "1"), LN_INITS), FuseLayerNorm)
    assert any("trailing" in n for n in res.notes)
    res = unchanged(parse(LN % (17, "-1", "Pow(d, two)", "1"), LN_INITS), FuseLayerNorm)
    assert any("axes differ" in n for n in res.notes)
    res = unchanged(parse(LN % (13, "-1", "Pow(d, two)", "-1"), LN_INITS), FuseLayerNorm)
    assert any("opset >= 17" in n for n in res.notes)
