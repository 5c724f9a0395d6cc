"""Delta debugging: ddmin on its own, and a planted bad rewrite in a 501-node model cut down to
a failing subgraph of at most 10 nodes, written as a model that reproduces the failure."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt import provenance
from onnxopt.layerwise import compare_layers
from onnxopt.mapped import mapped_from_proto
from onnxopt.reduce import ddmin, reduce_failure
from tests.onnxopt.planted import BAD, feeds, planted


def test_ddmin_finds_a_one_minimal_failing_subset():
    tests = []

    def fails(subset):
        tests.append(1)
        return {13, 71} <= set(subset)  # fails only when both are present

    out = ddmin(list(range(200)), fails, max_tests=2000)
    assert sorted(out) == [13, 71]
    assert len(tests) < 200  # far fewer than one test per item and pair


def test_a_planted_bad_rewrite_reduces_to_a_small_failing_subgraph(tmp_path):
    a, b = planted()
    assert len(a.graph.node) >= 500
    ma, mb = mapped_from_proto(a), mapped_from_proto(b)
    f = feeds()
    rep = compare_layers(ma, mb, f)
    red = reduce_failure(ma, mb, f, rep)
    assert red.model is not None, red.why
    assert 1 <= len(red.model.graph.node) <= 10
    assert f"Gemm_{BAD}" in red.nodes
    # the subgraph reproduces the failure on its own inputs, against the expected values
    files = red.save(tmp_path / "case.onnx")
    assert [p.name for p in files] == ["case.onnx", "case.npz", "case.orig.onnx"]
    case = onnx.load(files[0])
    onnx.checker.check_model(case, full_check=True)
    data = np.load(files[1])
    inputs = {k: data[k] for k in data.files if not k.startswith("expected/")}
    sess = ort.InferenceSession(case.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
    worst = max(
        np.max(np.abs(got[k.split("/", 1)[1]] - data[k])) for k in data.files if "expected" in k
    )
    assert worst > 1e-2
    # the original nodes it came from (provenance), as their own model, compute the expected
    orig = onnx.load(files[2])
    assert sorted(n.name for n in orig.graph.node) == [f"Add_{BAD}", f"MatMul_{BAD}"]
    gemm = next(n for n in case.graph.node if n.op_type == "Gemm")
    assert set(provenance.origins(gemm)) == {f"Add_{BAD}", f"MatMul_{BAD}"}


def test_a_correct_rewrite_has_nothing_to_reduce():
    a, b = planted(bad=None)
    ma, mb = mapped_from_proto(a), mapped_from_proto(b)
    rep = compare_layers(ma, mb, feeds())
    assert rep.first_over is None
    red = reduce_failure(ma, mb, feeds(), rep)
    assert red.model is None and "nothing to reduce" in red.why
