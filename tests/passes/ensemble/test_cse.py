"""Cross-model CSE: identical initializers and nodes of different members are kept once."""

from __future__ import annotations

import numpy as np
from onnx import helper

from onnxopt.passes.ensemble.merge import merge
from tests.passes.ensemble.models import linear, run, with_preprocessing

X = np.random.default_rng(7).standard_normal((5, 4)).astype(np.float32)


def test_cse_merges_shared_preprocessing():
    a, b = with_preprocessing(0), with_preprocessing(1)
    merged, rep = merge([a, b], "average")
    ops = [n.op_type for n in merged.graph.node]
    assert ops.count("Mul") == 2  # one shared preprocessing Mul + the 1/n scale
    assert rep.cse["initializers"] == 1 and rep.cse["nodes"] == 1
    ya, yb = run(a, {"x": X})["logits"], run(b, {"x": X})["logits"]
    np.testing.assert_allclose(run(merged, {"x": X})["logits"], (ya + yb) / 2, rtol=1e-6)


def test_cse_merges_identical_backbones():
    a = linear(0)
    merged, rep = merge([a, a], "average")
    assert [n.op_type for n in merged.graph.node].count("Gemm") == 1
    assert rep.cse == {
        "initializers": 2,
        "initializer_bytes": rep.cse["initializer_bytes"],
        "nodes": 2,
    }
    np.testing.assert_allclose(
        run(merged, {"x": X})["logits"], run(a, {"x": X})["logits"], rtol=1e-6
    )


def test_cse_ignores_attributes_written_at_their_default():
    a, b = linear(0), linear(0)
    b.graph.node[0].attribute.extend(
        [helper.make_attribute("transA", 0), helper.make_attribute("alpha", 1.0)]
    )
    merged, rep = merge([a, b], "average")
    assert rep.cse["nodes"] == 2
    assert [n.op_type for n in merged.graph.node].count("Gemm") == 1


def test_cse_keeps_nodes_with_different_attributes_apart():
    a, b = linear(0), linear(0)
    b.graph.node[0].attribute.extend([helper.make_attribute("alpha", 2.0)])
    merged, rep = merge([a, b], "average")
    assert [n.op_type for n in merged.graph.node].count("Gemm") == 2
    ya, yb = run(a, {"x": X})["logits"], run(b, {"x": X})["logits"]
    np.testing.assert_allclose(run(merged, {"x": X})["logits"], (ya + yb) / 2, rtol=1e-6)


def test_cse_off_keeps_both_branches():
    a = linear(0)
    merged, rep = merge([a, a], "average", cse=False)
    assert [n.op_type for n in merged.graph.node].count("Gemm") == 2
    assert rep.cse["nodes"] == 0


def test_cse_keeps_different_weights_apart():
    merged, rep = merge([linear(0), linear(1)], "average")
    assert rep.cse["nodes"] == 0 and rep.cse["initializers"] == 0
    assert [n.op_type for n in merged.graph.node].count("Gemm") == 2
