"""onnxruntime's profiler aggregated by op type and node: on events alone, and on a model."""

from __future__ import annotations

import math

import onnx

from onnxopt.data import load_feeds
from onnxopt.examples import FOLDER as EXAMPLES
from onnxopt.opprofile import aggregate, profile_model


def ev(node, op, dur, ts=100):
    return {
        "cat": "Node",
        "name": f"{node}_kernel_time",
        "dur": dur,
        "ts": ts,
        "args": {"op_name": op},
    }


def test_aggregate_sums_per_run_and_shares():
    events = [
        ev("c1", "Conv", 300),
        ev("c2", "Conv", 100),
        ev("g", "Gemm", 100),
        ev("c1", "Conv", 900, ts=1),  # before the timed runs: left out
        {"cat": "Node", "name": "c1_fence_before", "dur": 5, "ts": 100, "args": {}},
        {"cat": "Session", "name": "model_run", "dur": 800, "ts": 100},
    ]
    out = aggregate(events, runs=2, after_us=50)
    assert math.isclose(out["total_ms"], 0.25)
    assert [r["op"] for r in out["by_op"]] == ["Conv", "Gemm"]
    assert math.isclose(out["by_op"][0]["ms"], 0.2) and out["by_op"][0]["nodes"] == 2
    assert math.isclose(out["by_op"][0]["share"], 0.8)
    assert [r["node"] for r in out["by_node"]] == ["c1", "c2", "g"]


def test_profile_of_the_example():
    model = onnx.load(EXAMPLES / "digits_cnn.onnx")
    feeds = load_feeds(EXAMPLES / "digits_test.npz", model, batch=8).subset(1)
    out = profile_model(model, feeds, runs=5, seconds=0.2)
    assert 3 <= out["runs"] <= 5 and out["total_ms"] > 0
    ops = {r["op"] for r in out["by_op"]}
    assert "Conv" in ops  # onnxruntime's kernels, after its own fusions
    assert math.isclose(sum(r["share"] for r in out["by_op"]), 1.0, rel_tol=1e-6)
