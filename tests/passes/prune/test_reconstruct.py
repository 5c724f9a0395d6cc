"""Reconstruction: a ridge refit on calibration data recovers what the pruned channels did."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes.prune.prune import Prune

from . import models as pm
from .support import output


def _feeds(shape, runs=4, synthesized=False):
    rng = np.random.default_rng(3)
    return Feeds(
        [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(runs)],
        synthesized=synthesized,
        source="test",
    )


def _prune(model, feeds, **opts):
    o = {"importance": "l2", "ratio": 1 / 3 + 0.01, "alpha": 1e-9, "round_to": 1, **opts}
    return Prune.from_options(o).run_model(model, PassContext(feeds=feeds))


def test_linear_toy_redundant_channels_recovered_exactly():
    model = pm.linear_toy(zero=False)
    feeds = _feeds([32, 8])
    x = np.random.default_rng(9).standard_normal([16, 8]).astype(np.float32)
    ref = output(model, x)
    plain = _prune(model, feeds, reconstruct=False)
    assert onnx.numpy_helper.to_array(plain.model.graph.initializer[0]).shape[-1] in (3, 4)
    assert np.abs(output(plain.model, x) - ref).max() > 1e-2  # slicing alone loses their signal
    res = _prune(model, feeds)
    assert res.details["reconstructed"] and res.details["refit_layers"] == 1
    np.testing.assert_allclose(output(res.model, x), ref, rtol=1e-4, atol=1e-4)


def test_linear_toy_dead_channels_stay_exact():
    model = pm.linear_toy(zero=True)
    x = np.random.default_rng(9).standard_normal([16, 8]).astype(np.float32)
    res = _prune(model, _feeds([32, 8]), alpha=1e-3)
    np.testing.assert_allclose(output(res.model, x), output(model, x), rtol=1e-5, atol=1e-5)


def test_conv_refit_improves_and_bias_added():
    model = pm.unknown_op()  # c2 -> c3 prunable; convs without bias get one from the refit
    feeds = _feeds([1, 3, 4, 4], runs=16)
    x = feeds.runs[0]["x"]
    ref = output(model, x)
    plain = _prune(model, feeds, ratio=0.4, reconstruct=False)
    fit = _prune(model, feeds, ratio=0.4, alpha=1e-4)
    err_plain = np.abs(output(plain.model, x) - ref).mean()
    err_fit = np.abs(output(fit.model, x) - ref).mean()
    assert err_fit < 0.8 * err_plain
    c3 = next(n for n in fit.model.graph.node if n.name == "c3")
    assert len(c3.input) == 3  # bias input added by the refit


def test_synthesized_feeds_refuse_reconstruction():
    model = pm.linear_toy(zero=False)
    res = _prune(model, _feeds([32, 8], synthesized=True), reconstruct=True)
    assert not res.details["reconstructed"]
    assert any("synthesized" in n for n in res.notes)


def test_bn_statistics_reestimated():
    model = pm.depthwise_separable()
    feeds = _feeds([1, 4, 5, 5], runs=8)
    res = _prune(model, feeds, ratio=0.5, alpha=1e-4)
    assert any("BatchNormalization" in n for n in res.notes)
    onnx.checker.check_model(res.model, full_check=True)
    x = feeds.runs[0]["x"]
    out, ref = output(res.model, x), output(model, x)
    cos = float((out * ref).sum() / np.linalg.norm(out) / np.linalg.norm(ref))
    assert cos > 0.9
