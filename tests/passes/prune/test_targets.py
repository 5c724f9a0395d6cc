"""Choosing the kept units: ``ratio``, ``target_flops``, ``max_ratio`` and ``round_to``."""

from __future__ import annotations

import numpy as np
import pytest

from . import models as pm
from .support import check, prune, weight_shapes


def test_round_to_and_max_ratio_and_min_one():
    model = pm.residual_block()
    x = np.ones([2, 4, 8, 8], np.float32)
    res = prune(model, x, ratio=0.5, round_to=4)
    assert weight_shapes(res.model)["c1"][0] == 4
    res = prune(model, x, ratio=0.5, round_to=3)
    assert weight_shapes(res.model)["c1"][0] == 6  # 4 kept, rounded up to a multiple of 3
    # a group exactly round_to wide stays whole: half a runtime block saves nothing
    res = prune(model, x, ratio=0.5, round_to=8)
    assert res.model is None  # so nothing is left to prune
    # a narrower one is off the block whatever it keeps: not rounded
    res = prune(model, x, ratio=0.5, round_to=16)
    assert weight_shapes(res.model)["c1"][0] == 4
    res = prune(model, x, ratio=0.99, max_ratio=0.5)
    assert weight_shapes(res.model)["c1"][0] == 4
    res = prune(model, x, ratio=0.99, max_ratio=0.99)
    assert weight_shapes(res.model)["c1"][0] == 1  # never below one channel
    check(res.model)


def test_target_flops_tops_up_to_the_target():
    """MACs per pixel: 4·16 + 16·16 + 16·4 = 384. Halving both groups (round_to 8) leaves 128
    (0.33); halving one leaves 224 (0.58), the closest plan within a 0.6 target."""
    from onnxopt.summary import count_macs

    model = pm.conv_chain()
    x = np.random.default_rng(0).standard_normal([1, 4, 4, 4]).astype(np.float32)
    before = count_macs(model)[0]
    for glob in (False, True):
        res = prune(model, x, target_flops=0.6, round_to=8, **{"global": glob})
        assert count_macs(res.model)[0] / before == pytest.approx(224 / 384)
        assert sorted(w[0] for k, w in weight_shapes(res.model).items() if k != "c3") == [8, 16]
    res = prune(model, x, target_flops=0.2, round_to=8)  # below what round_to 8 allows
    assert count_macs(res.model)[0] / before == pytest.approx(128 / 384)
    assert any("not reached" in n for n in res.notes)


def test_target_flops_reaches_the_target():
    model = pm.concat_branches()
    x = np.ones([1, 3, 6, 6], np.float32)
    from onnxopt.summary import count_macs

    before = count_macs(model)[0]
    for glob in (False, True):
        res = prune(model, x, target_flops=0.6, **{"global": glob})
        after = count_macs(res.model)[0]
        assert after <= 0.6 * before + 1
        assert after >= 0.3 * before
