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


def run_span(ts):
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": 90}


def test_aggregate_takes_each_nodes_median_over_the_runs():
    events = [run_span(0), ev("c1", "Conv", 900, ts=1)]  # warm-up: before the timed runs
    for k, (c1, g) in enumerate([(300, 100), (310, 90), (5000, 110)]):  # a busy moment in run 3
        t = 100 * (k + 1)
        events += [run_span(t), ev("c1", "Conv", c1, t + 1), ev("c2", "Conv", 100, t + 2)]
        events += [ev("g", "Gemm", g, t + 3)]
        events.append({"cat": "Node", "name": "c1_fence_before", "dur": 5, "ts": t, "args": {}})
    out = aggregate(events, runs=3, after_us=50)
    assert out["runs"] == 3
    assert math.isclose(out["total_ms"], 0.31 + 0.1 + 0.1)
    assert [r["op"] for r in out["by_op"]] == ["Conv", "Gemm"]
    conv = out["by_op"][0]
    assert math.isclose(conv["ms"], 0.41) and conv["nodes"] == 2
    assert math.isclose(conv["share"], 0.41 / 0.51)
    assert [r["node"] for r in out["by_node"]][0] == "c1"


def test_profile_of_the_example():
    model = onnx.load(EXAMPLES / "digits_cnn.onnx")
    feeds = load_feeds(EXAMPLES / "digits_test.npz", model, batch=8).subset(1)
    out = profile_model(model, feeds, runs=5, seconds=0.2)
    assert 3 <= out["runs"] <= 5 and out["total_ms"] > 0
    ops = {r["op"] for r in out["by_op"]}
    assert "Conv" in ops  # onnxruntime's kernels, after its own fusions
    assert math.isclose(sum(r["share"] for r in out["by_op"]), 1.0, rel_tol=1e-6)
