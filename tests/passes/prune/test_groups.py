"""Channel groups on hand-made graphs: producers, the walk, grouped convs (whole conv-groups),
``keep``; the rules of single ops are in test_rules / test_reshapes, numerics in test_slicing."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxopt.passes.prune.groups import analyze
from onnxopt.passes.prune.plan import prepare

from . import models as pm
from .support import (
    analyze_groups,
    assert_closed,
    attr_of,
    check,
    member_kinds,
    output,
    prune,
    rand,
    weight_shapes,
)


def _members(g, kind=None):
    return sorted(
        (m.node, m.kind, m.index, m.axis, m.offset, m.expand)
        for m in g.members
        if kind is None or m.kind == kind
    )


def test_residual_block_couples_both_convs():
    a, groups = analyze_groups(pm.residual_block())
    g = groups[("c1", "c2")]
    assert g.prunable and g.size == 8
    assert _members(g, "out") == [("c1", "out", 1, 0, 0, 1), ("c2", "out", 1, 0, 0, 1)]
    assert {(m.node, m.index, m.axis) for m in g.members if m.kind == "in"} == {
        ("c2", 1, 1),
        ("c3", 1, 1),
    }
    assert not groups[("c3",)].prunable  # feeds the graph output
    assert any("graph output 'y'" in n for n in a.notes)


def test_depthwise_separable_is_one_group():
    _, groups = analyze_groups(pm.depthwise_separable())
    g = groups[("pw1",)]
    assert g.prunable
    kinds = {(m.node, m.kind) for m in g.members}
    assert {("bn", "param"), ("dw", "param"), ("dw", "group"), ("pw2", "in")} <= kinds
    assert ("dw",) not in groups  # depthwise is pass-through, not a producer


def test_unknown_op_closes_its_group_only():
    a, groups = analyze_groups(pm.unknown_op())
    g1 = groups[("c1",)]
    assert not g1.prunable
    assert any("LpNormalization 'lpnorm'" in r and "not understood" in r for r in g1.closed)
    assert any("LpNormalization" in n for n in a.notes)
    assert groups[("c2",)].prunable


def test_attention_heads_are_whole_units():
    _, groups = analyze_groups(pm.attention())
    g = groups[("k_proj", "q_proj", "v_proj")]
    assert g.prunable and g.block == 4 and g.units == 4
    kinds = {(m.node, m.kind) for m in g.members}
    assert {
        ("q_split", "shape"),
        ("merge_heads", "shape"),
        ("o_proj", "in"),
        ("v_bias", "param"),
    } <= kinds
    assert not groups[("o_proj",)].prunable


def test_keep_protects_a_group():
    _, graph = prepare(pm.residual_block())
    a = analyze(graph, keep=["c2"])
    g = next(g for g in a.groups.values() if "c1" in g.producers)
    assert not g.prunable and "kept by --keep c2" in g.closed
    a2 = analyze(prepare(pm.residual_block())[1], keep=["nope"])
    assert any("--keep nope" in n for n in a2.notes)


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
    g.node.insert(
        0,
        helper.make_node(
            "ConstantOfShape",
            ["w2_shape"],
            ["w2"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.1]),
        ),
    )
    a, groups = analyze_groups(m)
    assert not groups[("c1",)].prunable
    assert any("weight is computed at run time" in r for r in groups[("c1",)].closed)
    assert MacModel(a).total == 16 * (4 * 16 + 16 * 16 + 16 * 4)  # 4x4 pixels, all three


# ---------------------------------------------------------------------- grouped Conv


def test_grouped_conv_couples_whole_conv_groups():
    _, groups = analyze_groups(pm.resnext_block())
    g = groups[("pw1",)]
    assert g.prunable and g.size == 16 and g.block == 4 and g.units == 4
    assert {
        ("gconv", "param", 1, 0, 1, False),
        ("gconv", "param", 2, 0, 1, False),
        ("gconv", "group", 0, 0, 4, False),
        ("pw2", "in", 1, 1, 1, False),
    } <= member_kinds(g)
    assert ("gconv",) not in groups  # pass-through, not a producer


@pytest.mark.parametrize("ratio,kept", [(0.25, 3), (0.5, 2), (0.75, 1)])
def test_grouped_conv_prunes_whole_conv_groups(ratio, kept):
    model = pm.resnext_block()
    x = rand([1, 4, 6, 6])
    res = prune(model, x, ratio=ratio)
    check(res.model)
    c = 4 * kept
    assert weight_shapes(res.model) == {
        "pw1": (c, 4, 1, 1),
        "gconv": (c, 4, 3, 3),
        "pw2": (4, c, 1, 1),
    }
    assert attr_of(res.model, "gconv", "group") == kept
    y = output(res.model, x)
    assert y.shape == (1, 4, 6, 6)
    if ratio == 0.25:  # only the dead conv-group goes
        np.testing.assert_allclose(y, output(model, x), rtol=1e-5, atol=1e-5)


def test_concat_into_grouped_conv_aligns_each_branch():
    _, groups = analyze_groups(pm.concat_grouped((8, 8), groups=4))
    assert all(groups[(p,)].prunable and groups[(p,)].block == 4 for p in ("a", "b"))
    res = prune(pm.concat_grouped((8, 8), groups=4), rand([1, 3, 4, 4]), ratio=0.5)
    check(res.model)
    assert (
        weight_shapes(res.model)["mid"] == (8, 4, 3, 3) and attr_of(res.model, "mid", "group") == 2
    )
    assert output(res.model, rand([1, 3, 4, 4])).shape == (1, 4, 4, 4)
    assert_closed(
        pm.concat_grouped((6, 10), groups=4),
        "a",
        "channel groups are not whole conv-groups of 4 channels",
    )


def test_depthwise_after_concat_updates_group_when_one_branch_is_pruned():
    model = pm.concat_grouped((8, 8), groups=16)  # depthwise: group = C
    x = rand([1, 3, 4, 4])
    res = prune(model, x, ratio=0.5, keep=["a"])
    check(res.model)
    assert (
        weight_shapes(res.model)["mid"] == (12, 1, 3, 3)
        and attr_of(res.model, "mid", "group") == 12
    )
    assert output(res.model, x).shape == (1, 4, 4, 4)


def test_channel_multiplier_stays_closed():
    reason = "grouped convolution (group=8) from 8 to 16 channels (C_in != C_out"
    assert_closed(pm.channel_multiplier(), "pw1", reason)
    assert_closed(pm.channel_multiplier(), "gconv", reason)


@pytest.mark.parametrize("order", ["conv-then-norm", "norm-then-conv"])
def test_different_units_close(order):
    """Conv-groups of 4 and norm groups of 2 on one group: units of two sizes close it."""
    inits = {
        "w1": pm._w(16, 3, 1, 1),
        "wg": pm._w(16, 4, 3, 3),
        "s": pm._w(16),
        "t": pm._w(16),
        "w2": pm._w(4, 16, 1, 1),
    }
    conv = helper.make_node("Conv", ["a", "wg"], ["b"], name="gconv", group=4, pads=[1, 1, 1, 1])
    norm = helper.make_node("GroupNormalization", ["a", "s", "t"], ["b"], name="gn", num_groups=8)
    first, second = (conv, norm) if order == "conv-then-norm" else (norm, conv)
    second.input[0], first.output[0] = "b", "b"
    second.output[0] = "c"
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="pw1"),
        first,
        second,
        helper.make_node("Conv", ["c", "w2"], ["y"], name="pw2"),
    ]
    model = pm._model(nodes, inits, [1, 3, 4, 4], [1, 4, 4, 4], opset=21)
    what = "norm groups of 2" if order == "conv-then-norm" else "conv-groups of 4"
    blocks = "units of 4" if order == "conv-then-norm" else "units of 2"
    assert_closed(model, "pw1", f"{blocks} channels (heads or groups) and {what} differ")


def test_castlike_passes_channels_of_its_first_input_only():
    # raw exports: CastLike(activation, like) keeps the activation's channels, and an
    # activation used only as the 'like' of a CastLike constrains nothing
    m = pm.conv_chain()
    g = m.graph
    relu = next(n for n in g.node if n.name == "r1")
    relu.output[0] = "r1a"
    g.node.insert(
        list(g.node).index(relu) + 1,
        helper.make_node("CastLike", ["r1a", "x"], ["r1"], name="castlike"),
    )
    a, groups = analyze_groups(m)
    assert groups[("c1",)].prunable, a.notes
    assert not any("CastLike" in n for n in a.notes)


def test_groups_close_at_subgraph_boundaries():
    """A Conv's channels read inside an If branch (an outer-scope value) stay: pruning does
    not enter bodies, and says so."""
    m = pm.unknown_op()
    g = m.graph
    branch = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["ra"], name="inner")],
        "then",
        [],
        [helper.make_tensor_value_info("ra", 1, [1, 6, 4, 4])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["a"], ["na"], name="inner2")],
        "else",
        [],
        [helper.make_tensor_value_info("na", 1, [1, 6, 4, 4])],
    )
    g.input.append(helper.make_tensor_value_info("c", 9, []))
    g.node[1].CopyFrom(
        helper.make_node("If", ["c"], ["n"], then_branch=branch, else_branch=other, name="gate")
    )
    a, groups = analyze_groups(m)
    g1 = groups[("c1",)]
    assert not g1.prunable
    assert any("If 'gate'" in r and "subgraph boundaries" in r for r in g1.closed)
    assert groups[("c2",)].prunable
