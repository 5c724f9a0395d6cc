"""Harmonizing members: name collisions, shared inputs, shape/dtype checks, opsets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.errors import ModelError, OptionError
from onnxopt.passes.ensemble.merge import merge
from tests.passes.ensemble.models import linear, run

X = np.random.default_rng(7).standard_normal((5, 4)).astype(np.float32)


def test_name_collisions_are_prefixed():
    a, b = linear(0), linear(1)  # both use W, b, h, gemm, relu, logits
    merged, rep = merge([a, b], "average")
    names = [t.name for t in merged.graph.initializer]
    assert len(names) == len(set(names)) == 5  # 2 x (W, b) + the 1/n constant
    assert {"m0/W", "m1/W", "m0/b", "m1/b"} <= set(names)
    node_names = [n.name for n in merged.graph.node]
    assert len(node_names) == len(set(node_names))
    assert [v.name for v in merged.graph.input] == ["x"]  # shared by name
    assert rep.outputs == ["logits"] and rep.verified
    ya, yb = run(a, {"x": X})["logits"], run(b, {"x": X})["logits"]
    np.testing.assert_allclose(run(merged, {"x": X})["logits"], (ya + yb) / 2, rtol=1e-6)


def test_input_map_shares_differently_named_inputs():
    a, b = linear(0), linear(1, inp="pixels")
    merged, rep = merge([a, b], "max", input_map=["m1.pixels:x"])
    assert [v.name for v in merged.graph.input] == ["x"]
    ya, yb = run(a, {"x": X})["logits"], run(b, {"pixels": X})["logits"]
    np.testing.assert_array_equal(run(merged, {"x": X})["logits"], np.maximum(ya, yb))
    assert rep.verified


def test_unshared_inputs_stay_separate_with_two_inputs():
    a = linear(0)
    b = linear(1, inp="y")
    c = linear(2)
    # three one-input members with different names: shared by position, with a note
    merged, rep = merge([a, b, c], "average")
    assert [v.name for v in merged.graph.input] == ["x"]
    assert any("by position" in n for n in rep.notes)


def test_input_map_unknown_member_input_is_refused():
    with pytest.raises(OptionError, match="has no input 'nope'"):
        merge([linear(0), linear(1)], "average", input_map=["m1.nope:x"])


def test_mismatched_input_shape_is_refused():
    with pytest.raises(OptionError, match="shared input 'x'.*dim 1 differs"):
        merge([linear(0, din=4), linear(1, din=5)], "average")


def test_mismatched_input_dtype_is_refused():
    with pytest.raises(OptionError, match="dtype mismatch"):
        merge([linear(0), linear(1, dtype=TensorProto.DOUBLE)], "average")


def test_mismatched_output_shape_is_refused():
    with pytest.raises(OptionError, match="output .* dim 1 differs"):
        merge([linear(0, classes=3), linear(1, classes=4)], "average")


def test_members_at_different_opsets_merge():
    a, b = linear(0, opset=11), linear(1, opset=17)
    merged, rep = merge([a, b], "average", on="probs")
    assert rep.opset == 17
    assert [o.version for o in merged.opset_import if o.domain == ""] == [17]
    assert any("converted from opset 11 to 17" in n for n in rep.notes)
    assert merged.ir_version == max(a.ir_version, b.ir_version)
    assert rep.verified


def test_other_domain_version_conflict_is_refused():
    a, b = linear(0), linear(1)
    a.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))
    b.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    with pytest.raises(ModelError, match="disagree on the 'ai.onnx.ml' opset"):
        merge([a, b], "average")


def test_single_model_is_refused():
    with pytest.raises(OptionError, match="at least two"):
        merge([linear(0)], "average")


def test_input_model_is_not_modified():
    a, b = linear(0), linear(1, opset=13)
    before = a.SerializeToString(), b.SerializeToString()
    merge([a, b], "vote")
    assert (a.SerializeToString(), b.SerializeToString()) == before


def test_subgraph_names_are_prefixed():
    # a member with an If whose branches read outer-scope tensors
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["t"])],
        "t",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["e"])],
        "e",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    g = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["h"]),
            helper.make_node("If", ["flag"], ["logits"], then_branch=then_g, else_branch=else_g),
        ],
        "withif",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(np.ones((4, 3), np.float32), "W"),
            numpy_helper.from_array(np.zeros(3, np.float32), "b"),
            numpy_helper.from_array(np.array(False), "flag"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    merged, rep = merge([m, linear(1)], "average")
    assert rep.verified
    ya, yb = run(m, {"x": X})["logits"], run(linear(1), {"x": X})["logits"]
    np.testing.assert_allclose(run(merged, {"x": X})["logits"], (ya + yb) / 2, rtol=1e-6)


def test_impossible_opset_conversion_is_refused_clearly():
    # ImageScaler existed up to opset 8 and has no adapter to newer opsets
    g = helper.make_graph(
        [helper.make_node("ImageScaler", ["x"], ["logits"], scale=2.0, bias=[0.0, 0.0, 0.0])],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 1, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 1, 1])],
    )
    old = helper.make_model(g, opset_imports=[helper.make_opsetid("", 7)])
    old.ir_version = 3
    new = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["logits"])],
            "new",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 1, 1])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 1, 1])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(ModelError, match="cannot convert opset 7 to 17"):
        merge([old, new], "average")
