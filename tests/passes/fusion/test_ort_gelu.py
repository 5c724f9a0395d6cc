"""ort-fuse-gelu: Gelu forms -> com.microsoft FastGelu / BiasGelu."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.ort_gelu import OrtFuseGelu
from tests.helpers import apply, assert_close, counts, parse
from tests.passes.fusion.test_gelu import G_INITS, GELU_DYN_TANH, GELU_TS

R = np.random.default_rng(3)


HDR = '<ir_version: 9, opset_import: ["": 17]>'


ORT = "onnxruntime"


def test_contrib_gelu_fastgelu_and_bias():
    for text, op in ((GELU_TS, "Gelu"), (GELU_DYN_TANH, "FastGelu")):
        m = parse(text % 17, G_INITS)
        _, out = apply(OrtFuseGelu, m, target=ORT)
        assert counts(out) == {op: 1}
        assert_close(m, out)
    text = (
        (GELU_TS % 17)
        .replace("(float[2,8] x)", "(float[2,8] z)")
        .replace("{", "{ x = Add(z, gb)", 1)
    )
    m = parse(text, {**G_INITS, "gb": R.standard_normal(8).astype(np.float32)})
    res, out = apply(OrtFuseGelu, m, target=ORT)
    assert counts(out) == {"BiasGelu": 1}
    assert_close(m, out)


def test_contrib_gelu_negative_bias_shape_and_quickgelu():
    text = (
        (GELU_TS % 17)
        .replace("(float[2,8] x)", "(float[2,8] z)")
        .replace("{", "{ x = Add(z, gb)", 1)
    )
    m = parse(text, {**G_INITS, "gb": R.standard_normal((2, 8)).astype(np.float32)})
    res, out = apply(OrtFuseGelu, m, target=ORT)
    assert counts(out) == {"Gelu": 1, "Add": 1}
    assert any("not 1-D" in n for n in res.notes)
    silu = HDR + "g (float[2,8] x) => (float[2,8] y) { s = Sigmoid(x)  y = Mul(x, s) }"
    m = parse(silu)
    _, out = apply(OrtFuseGelu, m, target=ORT)
    assert counts(out) == {"QuickGelu": 1}
    assert_close(m, out)
