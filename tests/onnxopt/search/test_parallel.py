"""Calibration statistics and sensitivities split across worker processes (and Ray tasks)
equal the single-process ones bit for bit."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from onnxopt.contract import PassContext
from onnxopt.examples import FOLDER as EXAMPLES
from onnxopt.graph import opset_version, to_graph
from onnxopt.passes.quantize.calibrate import collect_stats
from onnxopt.passes.quantize.fallback import rank_sites
from onnxopt.passes.quantize.placement import CANDIDATES, make_plan
from onnxopt.passes.quantize.static import Builder, QuantizeInt8
from onnxopt.runner import Runner
from onnxopt.search.parallel import (
    calibration_stats,
    pool_map,
    probe_bytes,
    ray_map,
    sensitivities,
)
from onnxopt.synth import get_feeds


@pytest.fixture(scope="module")
def digits():
    model = onnx.load(EXAMPLES / "digits_cnn.onnx")
    feeds = get_feeds(model, EXAMPLES / "digits_test.npz", batch=20)
    tensors = [o for n in model.graph.node for o in n.output if n.op_type != "Constant"]
    return model, feeds, tensors


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for t in a:
        x, y = a[t], b[t]
        assert np.array_equal(x.hist, y.hist), t
        assert (x.half_range, x.min, x.max, x.count, x.exact_zeros) == (
            y.half_range,
            y.min,
            y.max,
            y.count,
            y.exact_zeros,
        ), t


def test_calibration_statistics_merge_bit_for_bit(digits):
    model, feeds, tensors = digits
    probe = probe_bytes(model, tensors)
    kw = {"bins": 512, "batch": 3, "dynamic_batch": True}
    one = collect_stats(probe, tensors, feeds.runs, **kw)
    assert len(feeds.runs) >= 9 and all(not s.empty for s in one.values())
    split = calibration_stats(probe, tensors, feeds.runs, mapper=pool_map(2), chunks=3, **kw)
    _assert_same(one, split)


def _builder(model, feeds):
    """The quantize pass's Builder for the digits model, and its sites."""
    p = QuantizeInt8()
    notes: list[str] = []
    ctx = PassContext(feeds=feeds)
    base, _ = p._prepare(model, ctx, notes)
    g = to_graph(base)
    allowed = [n.name for n in g.nodes if n.op in CANDIDATES]
    plan_kw = p._plan_options(opset_version(base), notes)
    plan = make_plan(g, set(allowed), **plan_kw)
    sites = [s for s in allowed if s in plan.sites]
    ranges = p._calibrate(base, plan.tensors(), ctx)
    build = Builder(
        base,
        model,
        ranges,
        plan_kw,
        activations="uint8",
        reduce_range=False,
        per_axis_ok=opset_version(base) >= 13,
    )
    return build, sites


@pytest.mark.slow
def test_sensitivities_split_equal_one_process(digits):
    model, feeds, _ = digits
    build, sites = _builder(model, feeds)
    assert len(sites) >= 3
    runs = feeds.subset(4)
    ref = Runner(threads=1).run(model, runs)
    one = rank_sites(build, sites, Runner(threads=1), runs, ref)
    split = sensitivities(build, sites, runs.runs, ref, mapper=pool_map(2), chunks=2)
    assert split == one


@pytest.mark.slow
def test_with_ray_tasks(digits):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
    ray = pytest.importorskip("ray")
    model, feeds, tensors = digits
    probe = probe_bytes(model, tensors)
    kw = {"bins": 512, "batch": 3, "dynamic_batch": True}
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        one = collect_stats(probe, tensors, feeds.runs, **kw)
        split = calibration_stats(probe, tensors, feeds.runs, mapper=ray_map(), chunks=4, **kw)
        _assert_same(one, split)
        build, sites = _builder(model, feeds)
        runs = feeds.subset(4)
        ref = Runner(threads=1).run(model, runs)
        one_s = rank_sites(build, sites, Runner(threads=1), runs, ref)
        assert sensitivities(build, sites, runs.runs, ref, mapper=ray_map(False), chunks=3) == one_s
    finally:
        if started:
            ray.shutdown()
