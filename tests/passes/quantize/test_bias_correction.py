"""Bias correction removes a planted output shift: weights that all round down by 0.4 of a
step, on inputs with a large mean, shift every output by a known amount."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes.quantize import QuantizeInt8
from onnxopt.passes.quantize.bias_correction import clipped_normal_mean
from onnxopt.passes.quantize.config import QuantizeConfig
from tests.helpers import parse, run

RNG = np.random.default_rng(11)
K, N, STEP = 16, 4, 0.01

MATMUL = """
<ir_version: 8, opset_import: ["": 17]>
g (float[8,16] x) => (float[8,4] y) {
    h = MatMul (x, W)
    y = Add (h, B)
}
"""

BN_CONV = """
<ir_version: 8, opset_import: ["": 17]>
g (float[2,16,6,6] x) => (float[2,4,6,6] y) {
    z = BatchNormalization (x, gamma, beta, mean, var)
    r = Relu (z)
    y = Conv (r, W, B)
}
"""


def _planted(shape: tuple[int, ...]) -> np.ndarray:
    """Weights on a grid of ``STEP`` (per output channel: one weight at 127 steps fixes the
    scale) plus 0.4 of a step: rounding to nearest takes 0.4·STEP off every other weight."""
    k = RNG.integers(-60, 60, size=shape).astype(np.float64)
    w = (k + 0.4) * STEP
    return w


def _quantize(m: onnx.ModelProto, feeds: Feeds, mode: str) -> onnx.ModelProto:
    config = QuantizeConfig(calibrator="minmax", bias_correction=mode, fallback=False)
    res = QuantizeInt8(config).run_model(m, PassContext(feeds=feeds, allow_slower=True))
    assert res.changed
    return res.model


def _mean_error(m: onnx.ModelProto, q: onnx.ModelProto, feeds: Feeds) -> np.ndarray:
    """Mean output error per channel (axis 1) over every run."""
    d = np.concatenate([run(q, r)[0] - run(m, r)[0] for r in feeds.runs])
    return np.moveaxis(d, 1, 0).reshape(d.shape[1], -1).mean(axis=1)


def test_empirical_correction_removes_the_planted_shift() -> None:
    w = _planted((K, N))
    w[0, :] = 127 * STEP  # per-column scale = STEP exactly
    m = parse(MATMUL, {"W": w.astype(np.float32), "B": np.zeros(N, np.float32)})
    feeds = Feeds([{"x": RNG.uniform(4.0, 6.0, (8, K)).astype(np.float32)} for _ in range(32)])
    planted = -0.4 * STEP * (K - 1) * 5.0  # ΔW·E[x] for every column
    off = _mean_error(m, _quantize(m, feeds, "off"), feeds)
    np.testing.assert_allclose(off, planted, rtol=0.1)
    on = _mean_error(m, _quantize(m, feeds, "empirical"), feeds)
    assert np.abs(on).max() < 0.05 * abs(planted)


def test_data_free_correction_from_batchnorm_statistics() -> None:
    w = _planted((N, K, 1, 1))
    w[:, 0] = 127 * STEP
    gamma = RNG.uniform(0.5, 2.0, K).astype(np.float32)
    beta = RNG.uniform(0.5, 3.0, K).astype(np.float32)
    m = parse(
        BN_CONV,
        {
            "gamma": gamma,
            "beta": beta,
            "mean": np.zeros(K, np.float32),
            "var": np.ones(K, np.float32) - 1e-5,  # BN(x) = γ·x + β exactly
            "W": w.astype(np.float32),
            "B": np.zeros(N, np.float32),
        },
    )
    feeds = Feeds([{"x": RNG.standard_normal((2, K, 6, 6)).astype(np.float32)} for _ in range(48)])
    expect = clipped_normal_mean(beta, gamma, 0.0, np.inf)
    planted = -0.4 * STEP * expect[1:].sum()
    off = _mean_error(m, _quantize(m, feeds, "off"), feeds)
    np.testing.assert_allclose(off, planted, rtol=0.15)
    on = _mean_error(m, _quantize(m, feeds, "data-free"), feeds)
    assert np.abs(on).max() < 0.15 * abs(planted)


def test_clipped_normal_mean_matches_sampling() -> None:
    z = RNG.normal(1.0, 2.0, 400_000)
    got = clipped_normal_mean(np.array([1.0]), np.array([2.0]), 0.0, 6.0)[0]
    assert abs(got - np.clip(z, 0.0, 6.0).mean()) < 0.01
