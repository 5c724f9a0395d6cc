"""Every mode's merged output equals the numpy combination of the members' separate runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from onnxopt.errors import OptionError
from onnxopt.passes.ensemble.merge import merge
from tests.passes.ensemble.models import linear, run, softmax

X = np.random.default_rng(3).standard_normal((16, 4)).astype(np.float32)
MEMBERS = [linear(0), linear(1, opset=13), linear(2)]


def _ys(on="outputs"):
    ys = [run(m, {"x": X})["logits"].astype(np.float64) for m in MEMBERS]
    return [softmax(y) for y in ys] if on == "probs" else ys


@pytest.mark.parametrize("on", ["outputs", "probs"])
def test_average(on):
    merged, rep = merge(MEMBERS, "average", on=on)
    got = run(merged, {"x": X})["logits"]
    np.testing.assert_allclose(got, np.mean(_ys(on), axis=0), rtol=1e-5, atol=1e-6)
    assert rep.verified and rep.verification["max_abs"] < 1e-5


def test_weighted_given():
    w = [0.2, 0.5, 0.3]
    merged, rep = merge(MEMBERS, "weighted", weights=w, on="probs")
    got = run(merged, {"x": X})["logits"]
    want = sum(wi * z for wi, z in zip(w, _ys("probs"), strict=True))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert rep.params["weights"] == w


def test_weighted_wrong_count_is_refused():
    with pytest.raises(OptionError, match="2 values for 3 members"):
        merge(MEMBERS, "weighted", weights=[0.5, 0.5])


def test_weighted_needs_weights():
    with pytest.raises(OptionError, match="needs --weights"):
        merge(MEMBERS, "weighted")


def test_max():
    merged, _ = merge(MEMBERS, "max", on="probs")
    np.testing.assert_allclose(
        run(merged, {"x": X})["logits"], np.max(_ys("probs"), axis=0), rtol=1e-5, atol=1e-6
    )


def test_vote_majority_and_ties_to_first_member():
    merged, rep = merge(MEMBERS, "vote")
    out = run(merged, {"x": X})
    preds = np.stack([np.argmax(y, -1) for y in _ys()])  # [members, N]
    want = []
    for col in preds.T:
        counts = np.bincount(col, minlength=3)
        best = np.flatnonzero(counts == counts.max())
        want.append(next(p for p in col if p in best))  # first member among the tied classes
    np.testing.assert_array_equal(out["logits_label"], want)
    np.testing.assert_array_equal(np.argmax(out["logits"], -1), want)
    assert rep.outputs == ["logits", "logits_label"]


def test_vote_tie_goes_to_first_member():
    # two members that disagree everywhere (W and -W): every sample is a 1-1 tie
    a = linear(5, bias=False)
    b = linear(5, bias=False)
    b.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(-numpy_helper.to_array(a.graph.initializer[0]), "W")
    )
    merged, _ = merge([a, b], "vote")
    ya = run(a, {"x": X})["logits"]
    yb = run(b, {"x": X})["logits"]
    differ = np.argmax(ya, -1) != np.argmax(yb, -1)
    assert differ.any()
    got = run(merged, {"x": X})["logits_label"]
    np.testing.assert_array_equal(got, np.argmax(ya, -1))


def test_stack_logistic_is_gemm_softmax():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    labels = np.argmax(np.mean(_ys_for(x), axis=0), -1).astype(np.int64)
    merged, rep = merge(MEMBERS, "stack", data={"x": x, "labels": labels})
    ops = [n.op_type for n in merged.graph.node]
    assert ops[-2:] == ["Gemm", "Softmax"] and "Concat" in ops
    inits = {t.name: numpy_helper.to_array(t) for t in merged.graph.initializer}
    w = next(v for k, v in inits.items() if "meta_W" in k)
    b = next(v for k, v in inits.items() if "meta_b" in k)
    assert w.shape == (9, 3) and b.shape == (3,)
    feats = np.concatenate([softmax(y) for y in _ys_for(X)], -1)
    np.testing.assert_allclose(
        run(merged, {"x": X})["logits"], softmax(feats @ w + b), rtol=1e-4, atol=1e-5
    )
    assert rep.verified and "held-out" in rep.accuracy_split
    assert set(rep.accuracy) == {"m0", "m1", "m2", "ensemble"}


def test_stack_ridge_is_gemm_only():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 100)
    merged, rep = merge(MEMBERS, "stack", meta="ridge", data={"x": x, "labels": labels})
    assert merged.graph.node[-1].op_type == "Gemm"
    assert rep.params["meta"] == "ridge"


def test_stack_without_labels_is_refused():
    with pytest.raises(OptionError, match="labels"):
        merge(MEMBERS, "stack", data={"x": X})


def test_unknown_mode_is_refused():
    with pytest.raises(OptionError, match="unknown merge mode"):
        merge(MEMBERS, "median")


def _ys_for(x):
    return [run(m, {"x": x})["logits"].astype(np.float64) for m in MEMBERS]
