"""numpy fitting on arrays alone: ensemble weights, ridge and logistic meta-learners, the cascade
threshold."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.passes.ensemble.fit import (
    cascade_accuracy,
    choose_threshold,
    fit_logistic,
    fit_ridge,
    fit_weights,
)
from onnxopt.passes.ensemble.merge import merge
from onnxopt.verify import accuracy
from tests.passes.ensemble.models import linear, softmax


def _noisy_members(n=300, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    onehot = np.eye(classes)[y]
    good = softmax(onehot * 4 + rng.standard_normal((n, classes)))
    bad = softmax(rng.standard_normal((n, classes)))
    return y, good, bad


def test_fit_weights_prefers_the_informative_member():
    y, good, bad = _noisy_members()
    w = fit_weights([bad, good], y, on="probs")
    assert w[1] > 0.8 and sum(w) == pytest.approx(1.0)
    w2 = fit_weights([np.log(bad), np.log(good)], y, on="outputs")
    assert w2[1] > w2[0]


def test_fit_weights_symmetric_members_stay_equal():
    y, good, _ = _noisy_members()
    w = fit_weights([good, good], y, on="probs")
    assert w == pytest.approx([0.5, 0.5])


def test_logistic_separates_and_matches_sklearn_accuracy():
    from sklearn.linear_model import LogisticRegression

    y, good, bad = _noisy_members(seed=1)
    x = np.concatenate([good, bad], -1)
    w, b = fit_logistic(x, y, 4, l2=1e-3)
    ours = accuracy([{"scores": x @ w + b}], [y])
    ref = LogisticRegression(C=1e3, max_iter=2000).fit(x, y).score(x, y) * 100
    assert ours >= ref - 2.0 and ours > 90


def test_ridge_closed_form():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3))
    y = rng.integers(0, 2, 50)
    w, b = fit_ridge(x, y, 2, alpha=0.0)
    t = np.eye(2)[y]
    xa = np.hstack([x, np.ones((50, 1))])
    sol = np.linalg.lstsq(xa, t, rcond=None)[0]
    np.testing.assert_allclose(w, sol[:-1], atol=1e-8)
    np.testing.assert_allclose(b, sol[-1], atol=1e-8)


def test_weighted_fit_reports_held_out_accuracy():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((80, 4)).astype(np.float32)
    y = rng.integers(0, 3, 80)
    merged, rep = merge(
        [linear(0), linear(1)], "weighted", on="probs", fit_data={"x": x, "labels": y}
    )
    assert len(rep.params["weights"]) == 2 and sum(rep.params["weights"]) == pytest.approx(1)
    assert "40 held-out" in rep.accuracy_split
    assert set(rep.accuracy) == {"m0", "m1", "ensemble"}


def test_choose_threshold_meets_target_with_most_cheap():
    conf = np.array([0.99, 0.95, 0.6, 0.55, 0.4])
    cheap_ok = np.array([1, 1, 0, 1, 0], bool)
    exp_ok = np.array([1, 1, 1, 1, 1], bool)
    t, note = choose_threshold(conf, cheap_ok, exp_ok, 100.0)
    assert note is None and t == pytest.approx(0.95, abs=1e-6)  # 0.6 would let a miss through
    acc, frac = cascade_accuracy(conf, cheap_ok, exp_ok, t)
    assert acc == 100.0 and frac == pytest.approx(0.4)
    t2, note2 = choose_threshold(conf, cheap_ok, np.zeros(5, bool), 100.0)
    assert note2 is not None and "not reachable" in note2
