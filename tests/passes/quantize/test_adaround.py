"""Learned rounding: lower output error than rounding to nearest, the same result for the same
seed, bounded rows; and the pass uses the learned weights."""

from __future__ import annotations

import numpy as np

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes.quantize import QuantizeInt8
from onnxopt.passes.quantize.adaround import layers_of, learn_rounding
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.passes.quantize.qdq import quantize_weight, weight_params
from tests.helpers import parse
from tests.passes.quantize.support import initializers

RNG = np.random.default_rng(3)

LAYER = """
<ir_version: 8, opset_import: ["": 17]>
g (float[32,24] x) => (float[32,8] y) {
    y = MatMul (x, W)
}
"""

CONV = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,4,6,6] x) => (float[1,3,6,6] y) {
    y = Conv <pads = [1,1,1,1]> (x, W)
}
"""


def _named(text: str, inits: dict) -> object:
    m = parse(text, inits)
    m.graph.node[0].name = "n0"
    return m


def _feeds(mix: np.ndarray, n: int = 24) -> Feeds:
    """Correlated inputs (4 random directions, a little noise and a mean): where rounding each
    weight on its own is far from the best rounding of the layer."""
    return Feeds(
        [
            {
                "x": (
                    RNG.standard_normal((32, len(mix))) @ mix
                    + 0.05 * RNG.standard_normal((32, 24))
                    + 0.5
                ).astype(np.float32)
            }
            for _ in range(n)
        ]
    )


def _mse(w: np.ndarray, q: np.ndarray, scale: np.ndarray, feeds: Feeds) -> float:
    x = np.concatenate([r["x"] for r in feeds.runs]).astype(np.float64)
    return float(np.mean((x @ (q * scale) - x @ w) ** 2))


def test_lower_output_error_than_nearest_and_deterministic() -> None:
    w = (RNG.standard_normal((24, 8)) * 0.2).astype(np.float32)
    m = _named(LAYER, {"W": w})
    feeds = _feeds(RNG.standard_normal((4, 24)))
    kw = dict(iterations=300, seed=7, reduce_range=False)
    learned, notes, cost = learn_rounding(m, {"n0": 1}, feeds.runs, **kw)
    assert cost["layers"] == 1 and cost["steps"] == 300, notes
    got = learned["n0"]
    scale = weight_params(w, 1)
    near = quantize_weight(w, scale, 1)
    np.testing.assert_array_equal(got.scale, scale)
    assert np.abs(got.q.astype(int) - near).max() <= 1  # each weight rounded down or up
    assert _mse(w, got.q, scale, feeds) < 0.8 * _mse(w, near, scale, feeds)
    again, _, _ = learn_rounding(m, {"n0": 1}, feeds.runs, **kw)
    np.testing.assert_array_equal(again["n0"].q, got.q)


def test_conv_rows_are_im2col_patches_in_bounded_number() -> None:
    w = (RNG.standard_normal((3, 4, 3, 3)) * 0.3).astype(np.float32)
    m = _named(CONV, {"W": w})
    (layer,), _ = layers_of(m, {"n0": 0})
    assert layer.k == 4 * 9 and layer.grouped().shape == (1, 3, 36)
    runs = [{"x": RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)} for _ in range(8)]
    learned, _, cost = learn_rounding(
        m, {"n0": 0}, runs, iterations=100, seed=0, reduce_range=False, max_rows=40
    )
    assert learned["n0"].q.shape == w.shape and learned["n0"].q.dtype == np.int8


def test_pass_writes_the_learned_weights() -> None:
    w = (RNG.standard_normal((24, 8)) * 0.2).astype(np.float32)
    m = _named(LAYER, {"W": w})
    feeds = _feeds(RNG.standard_normal((4, 24)), 16)
    config = QuantizeConfig(
        rounding="adaround", adaround_iterations=200, fallback=False, bias_correction="off"
    )
    res = QuantizeInt8(config).run_model(m, PassContext(feeds=feeds, allow_slower=True))
    learned, _, _ = learn_rounding(
        m, {"n0": 1}, feeds.runs, iterations=200, seed=0, reduce_range=res.details["reduce_range"]
    )
    q = next(
        v for k, v in initializers(res.model).items() if v.dtype == np.int8 and v.shape == w.shape
    )
    np.testing.assert_array_equal(q, learned["n0"].q)
    assert res.details["adaround"]["layers"] == 1
