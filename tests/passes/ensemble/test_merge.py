"""The merge itself: the merged model keeps only what its outputs need, its names never
collide, and the options arrive as keywords or as a MergeConfig."""

from __future__ import annotations

from onnxopt.passes.ensemble.merge import merge
from tests.passes.ensemble.models import linear


def test_other_member_outputs_are_dropped_with_a_note():
    from onnx import TensorProto, helper

    a = linear(0)
    a.graph.node.append(helper.make_node("Neg", ["h"], ["extra"], name="neg"))
    a.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 3]))
    merged, rep = merge([a, linear(1)], "average")
    assert "Neg" not in [n.op_type for n in merged.graph.node]
    assert rep.outputs == ["logits"]
    assert any("has 2 outputs" in n for n in rep.notes)
    assert any("dropped 1 node" in n for n in rep.notes)


def test_member_labelled_like_the_head_does_not_collide():
    merged, rep = merge([linear(0), linear(1)], "vote", labels=["ensemble", "other"])
    names = [n.name for n in merged.graph.node]
    assert len(names) == len(set(names)) and rep.verified
