"""Serial mode: ``io_map`` chains members; the merged graph equals running them one after
another."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.errors import OptionError
from onnxopt.passes.ensemble.merge import merge
from tests.passes.ensemble.models import linear, run

X = np.random.default_rng(3).standard_normal((16, 4)).astype(np.float32)


def test_serial_chains_members_with_io_map():
    a = linear(0, out="feat", classes=5)
    b = linear(1, inp="z", din=5)
    merged, rep = merge([a, b], "serial", io_map=["m0.feat:m1.z"])
    assert [v.name for v in merged.graph.input] == ["x"]
    assert rep.outputs == ["logits"]
    want = run(b, {"z": run(a, {"x": X})["feat"]})["logits"]
    np.testing.assert_allclose(run(merged, {"x": X})["logits"], want, rtol=1e-6)
    assert rep.verified


def test_serial_shape_mismatch_is_refused():
    a = linear(0, out="feat", classes=5)
    b = linear(1, inp="z", din=4)
    with pytest.raises(OptionError, match="--io-map m0.feat:m1.z: dim 1 differs"):
        merge([a, b], "serial", io_map=["m0.feat:m1.z"])


def test_serial_unknown_output_is_refused():
    with pytest.raises(OptionError, match="has no output 'nope'"):
        merge([linear(0), linear(1)], "serial", io_map=["m0.nope:m1.x"])
