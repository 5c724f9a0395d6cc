"""Calibration statistics split across worker processes (and Ray tasks) equal the
single-process ones bit for bit; so does the quantized model when the pass is given
``ctx.parallel`` (its calibration and its instrumented sensitivity run both split; the
sensitivity split alone is tested in tests/passes/quantize/test_sensitivity.py)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from onnxopt.contract import PassContext
from onnxopt.examples import FOLDER as EXAMPLES
from onnxopt.passes.quantize.collect import collect_stats, collect_stats_split, write_probe
from onnxopt.passes.quantize.sensitivity import measure
from onnxopt.passes.quantize.static import PARALLEL_MIN_RUNS, QuantizeInt8
from onnxopt.search.parallel import PoolMap, RayMap
from onnxopt.synth import get_feeds
from tests.passes.quantize.test_sensitivity import assert_same_stats, two_layer_probe

KW = {"bins": 512, "batch": 3, "dynamic_batch": True}


@pytest.fixture(scope="module")
def digits():
    model = onnx.load(EXAMPLES / "digits_cnn.onnx")
    feeds = get_feeds(model, EXAMPLES / "digits_test.npz", batch=10)
    tensors = [o for n in model.graph.node for o in n.output if n.op_type != "Constant"]
    return model, feeds, tensors


def _probe(model, tensors, tmp_path) -> bytes:
    path = tmp_path / "probe.onnx"
    write_probe(model, tensors, str(path))
    return path.read_bytes()


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for t in a:
        x, y = a[t], b[t]
        assert np.array_equal(x.hist, y.hist), t
        fields = ("half_range", "min", "max", "count", "exact_zeros")
        assert [getattr(x, f) for f in fields] == [getattr(y, f) for f in fields], t


def test_calibration_statistics_split_are_bit_for_bit(digits, tmp_path):
    """The statistics of every tensor over 36 runs, split over 3 processes and merged."""
    model, feeds, tensors = digits
    probe = _probe(model, tensors, tmp_path)
    _assert_same(
        collect_stats(probe, tensors, feeds.runs, **KW),
        collect_stats_split(probe, tensors, feeds.runs, PoolMap(3), **KW),
    )


@pytest.mark.slow
def test_quantize_with_parallel_calibration_is_bit_for_bit(digits):
    """The quantized model is the same byte for byte when the pass splits its calibration and
    its sensitivity run (empirical bias correction reads the latter)."""
    model, feeds, _ = digits
    assert len(feeds.runs) >= PARALLEL_MIN_RUNS
    p = QuantizeInt8.from_options(
        {"fallback": False, "sensitivity_runs": len(feeds.runs), "latency_aware": False}
    )
    _, one = p.apply(model, PassContext(feeds=feeds))
    _, split = p.apply(model, PassContext(feeds=feeds, parallel=PoolMap(2)))
    assert one.SerializeToString() == split.SerializeToString()


@pytest.mark.slow
def test_with_ray_tasks(digits, tmp_path):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
    ray = pytest.importorskip("ray")
    model, feeds, tensors = digits
    probe = _probe(model, tensors, tmp_path)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        one = collect_stats(probe, tensors, feeds.runs, **KW)
        _assert_same(one, collect_stats_split(probe, tensors, feeds.runs, RayMap(4), **KW))
        # the instrumented sensitivity run, split over Ray tasks
        m, sprobe, runs = two_layer_probe(np.random.default_rng(3))
        kw = {"batch": 3, "dynamic_batch": True}
        assert_same_stats(
            measure(m, sprobe, runs, **kw), measure(m, sprobe, runs, **kw, parallel=RayMap(3))
        )
    finally:
        if started:
            ray.shutdown()
