"""Channel dependency groups on hand-made graphs (structure only; numerics in test_prune_slicing)."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.passes.prune.groups import analyze
from onnxopt.passes.prune.plan import prepare

from . import prune_models as pm


def _groups(model):
    _, graph = prepare(model)
    a = analyze(graph)
    by_producer = {tuple(sorted(g.producers)): g for g in a.groups.values()}
    return a, by_producer


def _members(g, kind=None):
    return sorted((m.node, m.kind, m.index, m.axis, m.offset, m.expand) for m in g.members
                  if kind is None or m.kind == kind)


def test_residual_block_couples_both_convs():
    a, groups = _groups(pm.residual_block())
    g = groups[("c1", "c2")]
    assert g.prunable and g.size == 8
    assert _members(g, "out") == [("c1", "out", 1, 0, 0, 1), ("c2", "out", 1, 0, 0, 1)]
    assert {(m.node, m.index, m.axis) for m in g.members if m.kind == "in"} == {
        ("c2", 1, 1), ("c3", 1, 1)}
    assert not groups[("c3",)].prunable  # feeds the graph output
    assert any("graph output 'y'" in n for n in a.notes)


def test_concat_gives_offsets():
    _, groups = _groups(pm.concat_branches())
    ga, gb = groups[("a",)], groups[("b",)]
    assert ga.prunable and gb.prunable
    assert [(m.node, m.offset) for m in ga.members if m.kind == "in"] == [("c", 0)]
    assert [(m.node, m.offset) for m in gb.members if m.kind == "in"] == [("c", 6)]


def test_depthwise_separable_is_one_group():
    _, groups = _groups(pm.depthwise_separable())
    g = groups[("pw1",)]
    assert g.prunable
    kinds = {(m.node, m.kind) for m in g.members}
    assert {("bn", "param"), ("dw", "param"), ("dw", "group"), ("pw2", "in")} <= kinds
    assert ("dw",) not in groups  # depthwise is pass-through, not a producer


def test_flatten_and_reshape_into_gemm_expand():
    for reshape in (False, True):
        _, groups = _groups(pm.flatten_gemm(reshape=reshape))
        g = groups[("conv",)]
        assert g.prunable
        assert [(m.node, m.axis, m.expand) for m in g.members if m.kind == "in"] == [
            ("fc", 1, 16)]
        shape = [(m.node, m.axis, m.expand) for m in g.members if m.kind == "shape"]
        assert shape == ([("flat", 1, 16)] if reshape else [])


def test_unknown_op_closes_its_group_only():
    a, groups = _groups(pm.unknown_op())
    g1 = groups[("c1",)]
    assert not g1.prunable
    assert any("LpNormalization 'lpnorm'" in r and "not understood" in r for r in g1.closed)
    assert any("LpNormalization" in n for n in a.notes)
    assert groups[("c2",)].prunable


def test_attention_heads_are_whole_units():
    _, groups = _groups(pm.attention())
    g = groups[("k_proj", "q_proj", "v_proj")]
    assert g.prunable and g.block == 4 and g.units == 4
    kinds = {(m.node, m.kind) for m in g.members}
    assert {("q_split", "shape"), ("merge_heads", "shape"), ("o_proj", "in"),
            ("v_bias", "param")} <= kinds
    assert not groups[("o_proj",)].prunable


def test_keep_protects_a_group():
    _, graph = prepare(pm.residual_block())
    a = analyze(graph, keep=["c2"])
    g = next(g for g in a.groups.values() if "c1" in g.producers)
    assert not g.prunable and "kept by --keep c2" in g.closed
    a2 = analyze(prepare(pm.residual_block())[1], keep=["nope"])
    assert any("--keep nope" in n for n in a2.notes)


def test_split_at_group_boundaries_only():
    _, groups = _groups(pm.concat_split())
    assert groups[("a",)].prunable and groups[("b",)].prunable
    assert [(m.node, m.axis) for m in groups[("b",)].members if m.kind == "shape"] == [
        ("split", 1)]
    model = pm.concat_split()
    sizes = next(t for t in model.graph.initializer if t.name == "sizes")
    sizes.CopyFrom(onnx.numpy_helper.from_array(np.array([5, 5], np.int64), "sizes"))
    _, groups = _groups(model)
    assert not groups[("a",)].prunable
    assert any("splits inside a channel group" in r for r in groups[("b",)].closed)


def test_a_read_channel_count_closes_the_group():
    """Shape(t) of a pruned t changes value: a reader that needs the old channel count (an
    untracked tensor reshaped to it, the entry itself) closes t's group; readers of the other
    entries (batch, spatial) leave it prunable."""
    for reader, prunable in (("reshape-untracked", False), ("gather-channel", False),
                             ("gather-batch", True), ("slice-spatial", True)):
        a, groups = _groups(pm.shape_reader(reader))
        g = groups[("c1",)]
        assert g.prunable is prunable, reader
        if not prunable:
            assert any("channel count of 'r1'" in r for r in g.closed), g.closed
    # a tensor of another group reshaped to Shape(r1) would need both pruned alike: both close
    _, groups = _groups(pm.shape_reader("reshape-other-group"))
    assert not groups[("c1",)].prunable and not groups[("c3",)].prunable


def test_runtime_weight_closes_and_still_counts_in_the_total():
    """A conv whose weight is computed (ConstantOfShape, as in the onnx backend's light models)
    cannot be sliced: the groups it reads close with that reason, and its MACs still count in
    the total a --target-flops is a fraction of."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxopt.passes.prune.targets import MacModel

    m = pm.conv_chain(width=16)
    g = m.graph
    w2 = next(t for t in g.initializer if t.name == "w2")
    g.initializer.remove(w2)
    g.initializer.append(numpy_helper.from_array(np.array([16, 16, 1, 1], np.int64), "w2_shape"))
    g.node.insert(0, helper.make_node(
        "ConstantOfShape", ["w2_shape"], ["w2"],
        value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.1])))
    a, groups = _groups(m)
    assert not groups[("c1",)].prunable
    assert any("weight is computed at run time" in r for r in groups[("c1",)].closed)
    assert MacModel(a).total == 16 * (4 * 16 + 16 * 16 + 16 * 4)  # 4x4 pixels, all three
