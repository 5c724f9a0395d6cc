"""Which output of each member is combined, the label recomputed from the combined scores, and
members from different frameworks sharing one input through a reshape."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.errors import OptionError
from onnxopt.passes.ensemble.merge import merge
from tests.helpers import run

from .models import linear


def classifier(seed: int, classes=(0, 1, 2), din: int = 4) -> onnx.ModelProto:
    """skl2onnx's layout: ``label`` (int64 [N]) first, ``probabilities`` (float [N, C])
    second, from an ``ai.onnx.ml`` LinearClassifier declaring its classes."""
    r = np.random.default_rng(seed)
    coef = r.standard_normal(din * len(classes)).astype(np.float32)
    node = helper.make_node(
        "LinearClassifier",
        ["X"],
        ["label", "scores"],
        domain="ai.onnx.ml",
        coefficients=coef.tolist(),
        intercepts=[0.0] * len(classes),
        classlabels_ints=list(classes),
        post_transform="NONE",
    )
    g = helper.make_graph(
        [node, helper.make_node("Softmax", ["scores"], ["probabilities"], axis=-1)],
        "clf",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", din])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(classes)]),
        ],
    )
    return helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]
    )


def test_the_scores_output_is_combined_and_the_label_recomputed():
    a, b = classifier(1, classes=(3, 5, 7)), classifier(2, classes=(3, 5, 7))
    model, rep = merge([a, b], "average", labels=["a", "b"])
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    assert any("combining 'probabilities' (its class scores)" in n for n in rep.notes)
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    label, probs = run(model, {"X": x})
    avg = (run(a, {"X": x})[1] + run(b, {"X": x})[1]) / 2
    np.testing.assert_allclose(probs, avg, rtol=1e-6, atol=1e-7)
    assert np.array_equal(label, np.array([3, 5, 7])[avg.argmax(-1)])


def test_member_output_names_the_output_for_all_or_one_member():
    a, b = classifier(1), classifier(2)
    _, rep = merge([a, b], "average", labels=["a", "b"], member_output=["probabilities"])
    assert any("named by --member-output" in n for n in rep.notes)
    with pytest.raises(OptionError, match="'a.label' is not a float output"):
        merge([a, b], "average", labels=["a", "b"], member_output=["a:label"])
    with pytest.raises(OptionError, match="member 'b' has no output 'nope'"):
        merge([a, b], "average", labels=["a", "b"], member_output=["b:nope"])
    with pytest.raises(OptionError, match="no such member"):
        merge([a, b], "average", labels=["a", "b"], member_output=["c:probabilities"])


def test_members_declaring_different_classes_are_refused():
    a, b = classifier(1, classes=(0, 1, 2)), classifier(2, classes=(1, 2, 3))
    with pytest.raises(OptionError, match="declare different classes"):
        merge([a, b], "average", labels=["a", "b"])


def image_member(seed: int) -> onnx.ModelProto:
    """x float[N, 1, 2, 2] -> Flatten -> Gemm: an 'image' model over the same 4 features."""
    r = np.random.default_rng(seed)
    g = helper.make_graph(
        [
            helper.make_node("Flatten", ["img"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "W", "b"], ["logits"]),
        ],
        "img",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(r.standard_normal((4, 3)).astype(np.float32), "W"),
            numpy_helper.from_array(r.standard_normal(3).astype(np.float32), "b"),
        ],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_members_share_an_input_through_a_reshape():
    flat, img = linear(1, inp="X"), image_member(2)
    model, rep = merge([flat, img], "average", labels=["flat", "img"], input_map=["img.img:X"])
    assert [i.name for i in model.graph.input] == ["X"]
    assert any("reshaped to [-1, 1, 2, 2]" in n for n in rep.notes)
    assert rep.verified
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    want = (run(flat, {"X": x})[0] + run(img, {"img": x.reshape(5, 1, 2, 2)})[0]) / 2
    np.testing.assert_allclose(run(model, {"X": x})[0], want, rtol=1e-6, atol=1e-6)


def test_shapes_with_other_element_counts_still_refused():
    flat, img = linear(1, inp="X", din=5), image_member(2)
    with pytest.raises(OptionError, match="shared input 'X'"):
        merge([flat, img], "average", labels=["flat", "img"], input_map=["img.img:X"])
