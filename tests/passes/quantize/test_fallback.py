"""Accuracy-aware fallback: one deliberately sensitive layer, and only it, returns to float."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes.quantize import QuantizeInt8
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.passes.quantize.fallback import sqnr_db
from onnxopt.runner import Runner
from onnxopt.verify import Budget, compare

RNG = np.random.default_rng(2)

TEXT = """
<ir_version: 8, opset_import: ["": 17]>
g (float[4,16] x) => (float[4,8] y) {
    h1 = MatMul (x, W1)
    h2 = MatMul (h1, W2)
    r2 = Relu (h2)
    y = MatMul (r2, W3)
}
"""


def _model() -> onnx.ModelProto:
    w1 = RNG.standard_normal((16, 16)).astype(np.float32) * 0.25
    w1[:, 0] *= 2000.0  # h1 channel 0 is a huge outlier ...
    w2 = RNG.standard_normal((16, 16)).astype(np.float32) * 0.25
    w2[0, :] = 0.0  # ... that W2 ignores: per-tensor quantizing h1 (MatMul_1's input) wrecks it
    w3 = RNG.standard_normal((16, 8)).astype(np.float32) * 0.25
    m = onnx.parser.parse_model(TEXT)
    for n, node in enumerate(m.graph.node):
        node.name = f"mm{n}" if node.op_type == "MatMul" else "relu"
    m.graph.initializer.extend(
        numpy_helper.from_array(v, k) for k, v in {"W1": w1, "W2": w2, "W3": w3}.items()
    )
    return m


def _feeds(n: int = 24) -> Feeds:
    return Feeds([{"x": RNG.standard_normal((4, 16)).astype(np.float32)} for _ in range(n)])


def test_sensitive_layer_alone_returns_to_float() -> None:
    m, feeds = _model(), _feeds()
    budget = Budget(min_cosine=0.999)
    ctx = PassContext(feeds=feeds, budget=budget, runner=Runner(), allow_slower=True)
    res = QuantizeInt8(QuantizeConfig(calibrator="minmax")).run_model(m, ctx)
    assert res.changed
    floats = [r["node"] for r in res.details["float_nodes"]]
    assert floats == ["mm1"]
    assert sorted(res.sites) == ["mm0", "mm3"]
    assert any(n.startswith("kept float: mm1") for n in res.notes)
    comp = compare(Runner().run(m, feeds), Runner().run(res.model, feeds))
    assert budget.check(comp).ok
    # the float MatMul reads unquantized h1
    mm1 = next(n for n in res.model.graph.node if n.name == "mm1")
    assert list(mm1.input) == ["h1", "W2"]


def test_no_fallback_without_budget_misses() -> None:
    m, feeds = _model(), _feeds()
    config = QuantizeConfig(calibrator="minmax", fallback=False)
    res = QuantizeInt8(config).run_model(m, PassContext(feeds=feeds, allow_slower=True))
    comp = compare(Runner().run(m, feeds), Runner().run(res.model, feeds))
    assert comp.cosine < 0.999  # the negative case: fully quantized misses the budget
    assert res.details["float_nodes"] == []


def test_sqnr() -> None:
    a = [{"y": np.ones(4, np.float32)}]
    assert sqnr_db(a, a) == math.inf
    b = [{"y": np.full(4, 1.1, np.float32)}]
    assert math.isclose(sqnr_db(a, b), 20.0, rel_tol=1e-4)
