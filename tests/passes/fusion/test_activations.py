"""fuse-activations: HardSigmoid / HardSwish / Swish subgraphs -> one op."""

from __future__ import annotations

import numpy as np

from onnxopt.contract import PassContext
from onnxopt.graph import to_graph
from onnxopt.passes.fusion.activations import ActivationsConfig, FuseActivations
from tests.helpers import apply, assert_close, counts, parse, unchanged

HSWISH = """<ir_version: 8, opset_import: ["": 17]>
g (float[2,8] x) => (float[2,8] y) {
  a = Add(x, three)
  c = Clip(a, zero, six)
  h = Div(c, six)
  y = Mul(x, h)
}"""


A_INITS = {"three": np.float32(3), "zero": np.float32(0), "six": np.float32(6)}


def test_hardswish_and_hardsigmoid():
    m = parse(HSWISH, A_INITS)
    res, out = apply(FuseActivations, m)
    assert counts(out) == {"HardSwish": 1}
    assert_close(m, out)
    m = parse(HSWISH.replace("y = Mul(x, h)", "y = Neg(h)"), A_INITS)
    res, out = apply(FuseActivations, m)
    assert counts(out) == {"HardSigmoid": 1, "Neg": 1}
    assert_close(m, out)


def test_activation_negative_bounds_and_swish_opset():
    res = unchanged(parse(HSWISH, {**A_INITS, "zero": np.float32(-1)}), FuseActivations)
    assert any("Clip bounds" in n for n in res.notes)
    text = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2,8] x) => (float[2,8] y) { s = Sigmoid(x)  y = Mul(s, x) }"""
    unchanged(parse(text), FuseActivations)  # Swish is opt-in (no onnxruntime kernel)
    res = FuseActivations(ActivationsConfig(swish=True)).run(to_graph(parse(text)), PassContext())
    assert res.rewrites == 0 and any("opset >= 24" in n for n in res.notes)


def test_near_constants_are_declined():
    """Found by fuzzing: ``Clip(x + 3.0015, 0, 6) / 6`` fused into HardSigmoid, whose linear
    part is then off by 2.5e-4 (the matcher allowed constants within 1e-3)."""
    unchanged(parse(HSWISH, {**A_INITS, "three": np.float32(3.0015)}), FuseActivations)
    unchanged(parse(HSWISH, {**A_INITS, "six": np.float32(6.005)}), FuseActivations)
    f16 = {k: np.float16(v) for k, v in A_INITS.items()}
    m = parse(HSWISH.replace("float[", "float16["), f16)
    res, out = apply(FuseActivations, m)
    assert counts(out) == {"HardSwish": 1}
