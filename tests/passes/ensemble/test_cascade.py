"""Gated cascade: ONNX If that skips the expensive member when the cheap one is confident."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.errors import OptionError
from onnxopt.passes.ensemble.merge import merge
from tests.passes.ensemble.models import linear, run, slow, softmax

CHEAP = linear(0, scale=20.0, bias=False)  # large logits: confident unless x is ~0
EXPENSIVE = slow(1)
CONFIDENT = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32) * 3
UNSURE = np.zeros((1, 4), np.float32)  # cheap logits all 0: top probability 1/3


def _executed(model, x) -> set[str]:
    """Names of the nodes onnxruntime ran on ``x`` (its profiler lists every node run, inside
    If branches too): which branch ran is read from what executed, not from a timing."""
    import json
    import os
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "prof")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        s.run(None, {"x": x})
        with open(s.end_profiling()) as f:
            events = json.load(f)
    return {
        e["name"].removesuffix("_kernel_time")
        for e in events
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    }


def test_cascade_structure_and_outputs():
    merged, rep = merge([CHEAP, EXPENSIVE], "cascade", threshold=0.9)
    top = [n.op_type for n in merged.graph.node]
    assert top[-1] == "If" and "MatMul" not in top  # the expensive layers live in the branch
    if_node = merged.graph.node[-1]
    else_ops = [
        n.op_type for n in next(a.g for a in if_node.attribute if a.name == "else_branch").node
    ]
    assert else_ops.count("MatMul") == 26
    assert rep.params["expensive_nodes_in_branch"] == 26 + 24
    assert softmax(run(CHEAP, {"x": CONFIDENT})["logits"]).max() >= 0.9
    np.testing.assert_array_equal(
        run(merged, {"x": CONFIDENT})["logits"], run(CHEAP, {"x": CONFIDENT})["logits"]
    )
    np.testing.assert_allclose(
        run(merged, {"x": UNSURE})["logits"], run(EXPENSIVE, {"x": UNSURE})["logits"], rtol=1e-6
    )


def test_cascade_skips_the_expensive_branch():
    merged, _ = merge([CHEAP, EXPENSIVE], "cascade", threshold=0.9)
    if_node = merged.graph.node[-1]
    branch = next(a.g for a in if_node.attribute if a.name == "else_branch")
    for i, n in enumerate(branch.node):  # named, so the profiler's events can be told apart
        n.name = n.name or f"expensive_{i}"
    expensive = {n.name for n in branch.node if n.op_type == "MatMul"}
    assert len(expensive) == 26
    assert not expensive & _executed(merged, CONFIDENT)  # the gate holds: none of it runs
    assert expensive <= _executed(merged, UNSURE)  # negative case: the gate fails, it all runs


def test_cascade_gate_decides_for_the_whole_batch():
    merged, _ = merge([CHEAP, EXPENSIVE], "cascade", threshold=0.9)
    batch = np.concatenate([CONFIDENT, UNSURE])
    np.testing.assert_allclose(
        run(merged, {"x": batch})["logits"], run(EXPENSIVE, {"x": batch})["logits"], rtol=1e-6
    )


def test_cascade_target_accuracy_picks_threshold():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((60, 4)) * rng.uniform(0, 0.2, (60, 1))).astype(np.float32)
    labels = np.argmax(run(EXPENSIVE, {"x": x})["logits"], -1)  # the expensive one is right
    merged, rep = merge(
        [CHEAP, EXPENSIVE], "cascade", target_accuracy=100.0, data={"x": x, "labels": labels}
    )
    assert 0.0 < rep.params["threshold"] <= 1.0 + 1e-6
    assert rep.accuracy["ensemble"] >= rep.accuracy["m0"]
    assert rep.verified


def test_cascade_needs_threshold_or_target():
    with pytest.raises(OptionError, match="exactly one of --threshold or --target-accuracy"):
        merge([CHEAP, EXPENSIVE], "cascade")


def test_cascade_takes_two_members():
    with pytest.raises(OptionError, match="two members"):
        merge([CHEAP, EXPENSIVE, linear(3)], "cascade", threshold=0.5)
