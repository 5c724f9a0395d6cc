"""Cross-layer equalization: exact in float, evens out the per-channel weight ranges."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.quantize.equalize import equalize, find_pairs
from tests.helpers import parse, run
from tests.passes.quantize.support import initializers

RNG = np.random.default_rng(5)

TWO_CONV = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
    c1 = Conv <pads = [1,1,1,1]> (x, W1, B1)
    r1 = Relu (c1)
    y = Conv <pads = [1,1,1,1]> (r1, W2, B2)
}
"""

DEPTHWISE = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,4,8,8] x) => (float[1,6,8,8] y) {
    d = Conv <group = 4, pads = [1,1,1,1]> (x, Wd, Bd)
    r = LeakyRelu <alpha = 0.1> (d)
    y = Conv (r, Wp, Bp)
}
"""


def _spread(w: np.ndarray, axis: int) -> float:
    """max over channels / min over channels of max|w| per channel along ``axis``."""
    r = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1)
    return float(r.max() / r.min())


def test_two_layers_equal_outputs_and_even_ranges() -> None:
    w1 = RNG.standard_normal((5, 3, 3, 3)).astype(np.float32)
    w1 *= np.array([0.01, 0.1, 1.0, 10.0, 50.0], np.float32)[:, None, None, None]
    m = parse(
        TWO_CONV,
        {
            "W1": w1,
            "B1": RNG.standard_normal(5).astype(np.float32),
            "W2": RNG.standard_normal((4, 5, 3, 3)).astype(np.float32),
            "B2": RNG.standard_normal(4).astype(np.float32),
        },
    )
    x = {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    before = run(m, x)[0]
    pairs, notes = equalize(m)
    assert pairs == 1, notes
    after = run(m, x)[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    w = initializers(m)
    # the channel ranges of W1 (outputs) and W2 (inputs) become the same, and far more even
    r1 = np.abs(w["W1"]).reshape(5, -1).max(1)
    r2 = np.abs(np.moveaxis(w["W2"], 1, 0)).reshape(5, -1).max(1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    assert _spread(w1, 0) > 1000 and _spread(w["W1"], 0) < _spread(w1, 0) / 20


def test_depthwise_then_pointwise_through_leaky_relu() -> None:
    wd = RNG.standard_normal((4, 1, 3, 3)).astype(np.float32)
    wd *= np.array([0.02, 0.5, 4.0, 30.0], np.float32)[:, None, None, None]
    m = parse(
        DEPTHWISE,
        {
            "Wd": wd,
            "Bd": RNG.standard_normal(4).astype(np.float32),
            "Wp": RNG.standard_normal((6, 4, 1, 1)).astype(np.float32),
            "Bp": RNG.standard_normal(6).astype(np.float32),
        },
    )
    x = {"x": RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    before = run(m, x)[0]
    assert equalize(m)[0] == 1
    np.testing.assert_allclose(run(m, x)[0], before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    assert _spread(initializers(m)["Wd"], 0) < _spread(wd, 0) / 10


def test_clip_between_layers_is_left_alone() -> None:
    m = parse(
        TWO_CONV.replace("r1 = Relu (c1)", "r1 = Clip (c1, lo, hi)"),
        {
            "W1": RNG.standard_normal((5, 3, 3, 3)).astype(np.float32),
            "B1": np.zeros(5, np.float32),
            "W2": RNG.standard_normal((4, 5, 3, 3)).astype(np.float32),
            "B2": np.zeros(4, np.float32),
            "lo": np.array(0.0, np.float32),
            "hi": np.array(6.0, np.float32),
        },
    )
    pairs, notes = find_pairs(m, None, "skip")
    assert pairs == [] and any("Clip" in n for n in notes)
    assert len(find_pairs(m, None, "relu")[0]) == 1
