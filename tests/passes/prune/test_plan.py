"""Planning: importance needs, the width step and its note."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.contract import PassContext, PassError
from onnxopt.data import Feeds
from onnxopt.errors import OptionError
from onnxopt.passes.prune import Prune

from . import models as pm
from .support import prune, weight_shapes


def test_activation_importance_needs_real_data():
    with pytest.raises(PassError, match="needs real data"):
        prune(pm.residual_block(), np.ones([2, 4, 8, 8], np.float32), importance="activation")


def test_round_to_auto_is_the_default_and_uses_the_cpu_block():
    """By default kept widths are multiples of onnxruntime's channel block on this CPU (16 with
    AVX-512, 8 with AVX2), and the report says so."""
    from onnxopt.passes.prune.config import PruneConfig
    from onnxopt.passes.prune.plan import round_to
    from onnxopt.passes.prune.targets import auto_round_to

    step = auto_round_to()
    assert step in (8, 16)
    assert round_to(PruneConfig()) == step
    assert round_to(PruneConfig.from_options({"round_to": "3"})) == 3
    with pytest.raises(OptionError, match="round_to must be 'auto' or an integer"):
        PruneConfig.from_options({"round_to": "x"})
    model = pm.conv_chain(width=32)
    x = np.random.default_rng(0).standard_normal([1, 4, 4, 4]).astype(np.float32)
    feeds = Feeds([{"x": x}], synthesized=True, source="test")
    res = Prune.from_options({"ratio": 0.5}).run_model(model, PassContext(feeds=feeds))
    widths = [w[0] for k, w in weight_shapes(res.model).items() if k != "c3"]
    assert widths == [16, 16] and all(w % step == 0 for w in widths)
    assert any(f"multiples of {step} (auto" in n for n in res.notes)
