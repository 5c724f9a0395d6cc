"""Rules of single ops on hand-made graphs: Concat offsets, Split and Slice on the channel axis
(at group boundaries only), GroupNormalization (whole norm groups); the cases that must stay
closed keep a note."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from . import models as pm
from .support import (
    analyze_groups,
    assert_closed,
    attr_of,
    check,
    const_of,
    member_kinds,
    output,
    prune,
    rand,
    weight_shapes,
)

BIG = np.iinfo(np.int64).max


def _check_norm(model: onnx.ModelProto, opset: int) -> None:
    """onnx has no shape inference for GroupNormalization, and its checker rejects the deprecated
    opset-18 op: the model gets the plain checker from opset 21, and the full checker plus strict
    shape inference with each norm read as an Identity (it keeps its input's shape)."""
    if opset >= 21:
        onnx.checker.check_model(model)
    proxy = onnx.ModelProto()
    proxy.CopyFrom(model)
    for n in proxy.graph.node:
        if n.op_type == "GroupNormalization":
            n.CopyFrom(helper.make_node("Identity", n.input[:1], n.output[:1], name=n.name))
    check(proxy)


def test_concat_gives_offsets():
    _, groups = analyze_groups(pm.concat_branches())
    ga, gb = groups[("a",)], groups[("b",)]
    assert ga.prunable and gb.prunable
    assert [(m.node, m.offset) for m in ga.members if m.kind == "in"] == [("c", 0)]
    assert [(m.node, m.offset) for m in gb.members if m.kind == "in"] == [("c", 6)]


def test_split_at_group_boundaries_only():
    _, groups = analyze_groups(pm.concat_split())
    assert groups[("a",)].prunable and groups[("b",)].prunable
    assert [(m.node, m.axis) for m in groups[("b",)].members if m.kind == "shape"] == [("split", 1)]
    model = pm.concat_split()
    sizes = next(t for t in model.graph.initializer if t.name == "sizes")
    sizes.CopyFrom(onnx.numpy_helper.from_array(np.array([5, 5], np.int64), "sizes"))
    _, groups = analyze_groups(model)
    assert not groups[("a",)].prunable
    assert any("splits inside a channel group" in r for r in groups[("b",)].closed)


# ---------------------------------------------------------------------- GroupNormalization


@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm_is_whole_norm_groups(opset):
    _, groups = analyze_groups(pm.group_norm_block(opset))
    g = groups[("conv",)]
    assert g.prunable and g.block == 2 and g.units == 4
    per_unit = opset < 21  # opset 18: one scale/bias entry per norm group
    assert {
        ("gn", "param", 1, 0, 1, per_unit),
        ("gn", "param", 2, 0, 1, per_unit),
        ("gn", "group", 0, 0, 2, False),
        ("c2", "in", 1, 1, 1, False),
    } <= member_kinds(g)


@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm_prunes_whole_norm_groups_exactly(opset):
    """onnxruntime 1.32 runs GroupNormalization at opset 18 (scale/bias per norm group) and 21
    (per channel), though not each layout at the other opset: both are run."""
    model = pm.group_norm_block(opset)
    x = rand([1, 3, 5, 5])
    res = prune(model, x, ratio=0.25)
    _check_norm(res.model, opset)
    w = weight_shapes(res.model)
    assert w["conv"] == (6, 3, 3, 3) and w["c2"] == (4, 6, 1, 1)
    assert w["gn"] == ((6,) if opset >= 21 else (3,))
    assert attr_of(res.model, "gn", "num_groups") == 3
    np.testing.assert_allclose(output(res.model, x), output(model, x), rtol=1e-5, atol=1e-5)


def test_group_norm_across_a_concat():
    model = pm.concat_grouped((4, 6), groups=5, op="GroupNormalization")
    _, groups = analyze_groups(model)
    assert groups[("a",)].prunable and groups[("b",)].prunable and groups[("a",)].block == 2
    x = rand([1, 3, 4, 4])
    res = prune(model, x, ratio=0.5)
    _check_norm(res.model, 21)
    assert weight_shapes(res.model)["mid"] == (6,) and attr_of(res.model, "mid", "num_groups") == 3
    assert output(res.model, x).shape == (1, 4, 4, 4)


def test_group_norm_then_swish():
    """Shapes are inferred past the norm, so the Mul of a Swish after it knows its ranks."""
    inits = {
        "w": pm._w(8, 3, 1, 1, zero=(4, 5)),
        "s": pm._w(8),
        "t": pm._w(8, zero=(4, 5)),
        "w2": pm._w(4, 8, 1, 1),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("GroupNormalization", ["c", "s", "t"], ["n"], name="gn", num_groups=4),
        helper.make_node("Sigmoid", ["n"], ["sg"], name="sig"),
        helper.make_node("Mul", ["n", "sg"], ["sw"], name="swish"),
        helper.make_node("Conv", ["sw", "w2"], ["y"], name="c2"),
    ]
    model = pm._model(nodes, inits, [1, 3, 4, 4], [1, 4, 4, 4], opset=21)
    _, groups = analyze_groups(model)
    assert groups[("conv",)].prunable
    x = rand([1, 3, 4, 4])
    res = prune(model, x, ratio=0.25)
    _check_norm(res.model, 21)
    assert weight_shapes(res.model)["c2"] == (4, 6, 1, 1)
    np.testing.assert_allclose(output(res.model, x), output(model, x), rtol=1e-5, atol=1e-5)


def test_group_norm_not_in_whole_norm_groups_stays_closed():
    model = pm.concat_grouped((3, 5), groups=4, op="GroupNormalization")
    assert_closed(model, "a", "channel groups are not whole norm groups of 2 channels")


# ---------------------------------------------------------------------- Slice


def test_slice_at_group_boundaries():
    _, groups = analyze_groups(pm.concat_slice())
    ga, gb = groups[("a",)], groups[("b",)]
    assert ga.prunable and gb.prunable
    shape = {(m.node, m.index, m.axis) for m in ga.members if m.kind == "shape"}
    assert shape == {("slice0", 2, 0), ("slice1", 1, 0), ("slice1", 2, 0)}
    assert [(m.node, m.index) for m in gb.members if m.kind == "shape"] == [("slice1", 2)]
    assert [(m.node, m.offset) for m in gb.members if m.kind == "in"] == [("d", 0)]


SLICES = [
    ("exact-end", ([4], [10], [1]), None, [3], [8]),
    ("open-end", ([4], [BIG], [-3]), [1], [3], [BIG]),
    ("two-axes", ([4, 0], [10, 4], [1, 2]), [1, 1], [3, 0], [8, 4]),
]


@pytest.mark.parametrize(
    "second,steps,starts,ends", [c[1:] for c in SLICES], ids=[c[0] for c in SLICES]
)
def test_slice_prunes_exactly(second, steps, starts, ends):
    model = pm.concat_slice(second, steps)
    x = rand([1, 3, 4, 4])
    res = prune(model, x, ratio=0.25)
    check(res.model)
    w = weight_shapes(res.model)
    assert (w["a"], w["b"], w["c"], w["d"]) == (
        (3, 3, 1, 1),
        (5, 3, 1, 1),
        (5, 3, 1, 1),
        (5, 5, 1, 1),
    )
    assert const_of(res.model, "slice0", 2) == [3]
    assert (const_of(res.model, "slice1", 1), const_of(res.model, "slice1", 2)) == (starts, ends)
    np.testing.assert_allclose(output(res.model, x), output(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "second,text",
    [
        (([3], [9], [1]), "slices inside a channel group"),
        (([-6], [10], [1]), "with a step or from its end"),
    ],
)
def test_slice_inside_a_group_stays_closed(second, text):
    assert_closed(pm.concat_slice(second), "a", text)
    assert_closed(pm.concat_slice(second), "b", text)


def test_slice_on_another_axis_keeps_the_layout():
    inits = {
        "w": pm._w(6, 3, 1, 1, zero=(2,)),
        "w2": pm._w(4, 6, 1, 1),
        "s": np.array([1], np.int64),
        "e": np.array([3], np.int64),
        "ax": np.array([2], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="conv"),
        helper.make_node("Slice", ["a", "s", "e", "ax"], ["b"], name="crop"),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="c2"),
    ]
    model = pm._model(nodes, inits, [1, 3, 4, 4], [1, 4, 2, 4])
    _, groups = analyze_groups(model)
    g = groups[("conv",)]
    assert g.prunable and not [m for m in g.members if m.node == "crop"]
    x = rand([1, 3, 4, 4])
    res = prune(model, x, ratio=0.2)
    check(res.model)
    assert weight_shapes(res.model)["c2"] == (4, 5, 1, 1)
    np.testing.assert_allclose(output(res.model, x), output(model, x), rtol=1e-5, atol=1e-5)
