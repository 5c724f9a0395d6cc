"""Pruning through grouped convs (whole conv-groups), GroupNormalization (whole norm groups)
and channel-axis Slices (at group boundaries); the cases that must stay closed keep a note."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from typer.testing import CliRunner

from . import prune_models as pm
from .test_prune_cli import _app
from .test_prune_groups import _groups
from .test_prune_slicing import _check, _prune, _run, _weights

BIG = np.iinfo(np.int64).max


def _x(shape: list[int], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _attr(model: onnx.ModelProto, node: str, name: str) -> int:
    n = next(n for n in model.graph.node if n.name == node)
    return next(a.i for a in n.attribute if a.name == name)


def _const(model: onnx.ModelProto, node: str, index: int) -> list:
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    n = next(n for n in model.graph.node if n.name == node)
    return inits[n.input[index]].tolist()


def _kinds(g) -> set:
    return {(m.node, m.kind, m.index, m.axis, m.expand, m.unit) for m in g.members}


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
    _check(proxy)


def _closed(model: onnx.ModelProto, producer: str, text: str) -> None:
    a, groups = _groups(model)
    g = next(g for g in groups.values() if producer in g.producers)
    assert not g.prunable and any(text in r for r in g.closed), g.closed
    assert any(text in n for n in a.notes)


# ---------------------------------------------------------------------- grouped Conv


def test_grouped_conv_couples_whole_conv_groups():
    _, groups = _groups(pm.resnext_block())
    g = groups[("pw1",)]
    assert g.prunable and g.size == 16 and g.block == 4 and g.units == 4
    assert {("gconv", "param", 1, 0, 1, False), ("gconv", "param", 2, 0, 1, False),
            ("gconv", "group", 0, 0, 4, False), ("pw2", "in", 1, 1, 1, False)} <= _kinds(g)
    assert ("gconv",) not in groups  # pass-through, not a producer


@pytest.mark.parametrize("ratio,kept", [(0.25, 3), (0.5, 2), (0.75, 1)])
def test_grouped_conv_prunes_whole_conv_groups(ratio, kept):
    model = pm.resnext_block()
    x = _x([1, 4, 6, 6])
    res = _prune(model, x, ratio=ratio)
    _check(res.model)
    c = 4 * kept
    assert _weights(res.model) == {"pw1": (c, 4, 1, 1), "gconv": (c, 4, 3, 3),
                                   "pw2": (4, c, 1, 1)}
    assert _attr(res.model, "gconv", "group") == kept
    y = _run(res.model, x)
    assert y.shape == (1, 4, 6, 6)
    if ratio == 0.25:  # only the dead conv-group goes
        np.testing.assert_allclose(y, _run(model, x), rtol=1e-5, atol=1e-5)


def test_concat_into_grouped_conv_aligns_each_branch():
    _, groups = _groups(pm.concat_grouped((8, 8), groups=4))
    assert all(groups[(p,)].prunable and groups[(p,)].block == 4 for p in ("a", "b"))
    res = _prune(pm.concat_grouped((8, 8), groups=4), _x([1, 3, 4, 4]), ratio=0.5)
    _check(res.model)
    assert _weights(res.model)["mid"] == (8, 4, 3, 3) and _attr(res.model, "mid", "group") == 2
    assert _run(res.model, _x([1, 3, 4, 4])).shape == (1, 4, 4, 4)
    _closed(pm.concat_grouped((6, 10), groups=4), "a",
            "channel groups are not whole conv-groups of 4 channels")


def test_depthwise_after_concat_updates_group_when_one_branch_is_pruned():
    model = pm.concat_grouped((8, 8), groups=16)  # depthwise: group = C
    x = _x([1, 3, 4, 4])
    res = _prune(model, x, ratio=0.5, keep=["a"])
    _check(res.model)
    assert _weights(res.model)["mid"] == (12, 1, 3, 3) and _attr(res.model, "mid", "group") == 12
    assert _run(res.model, x).shape == (1, 4, 4, 4)


def test_channel_multiplier_stays_closed():
    reason = "grouped convolution (group=8) from 8 to 16 channels (C_in != C_out"
    _closed(pm.channel_multiplier(), "pw1", reason)
    _closed(pm.channel_multiplier(), "gconv", reason)


@pytest.mark.parametrize("order", ["conv-then-norm", "norm-then-conv"])
def test_different_units_close(order):
    """Conv-groups of 4 and norm groups of 2 on one group: units of two sizes close it."""
    inits = {"w1": pm._w(16, 3, 1, 1), "wg": pm._w(16, 4, 3, 3), "s": pm._w(16), "t": pm._w(16),
             "w2": pm._w(4, 16, 1, 1)}
    conv = helper.make_node("Conv", ["a", "wg"], ["b"], name="gconv", group=4, pads=[1, 1, 1, 1])
    norm = helper.make_node("GroupNormalization", ["a", "s", "t"], ["b"], name="gn",
                            num_groups=8)
    first, second = (conv, norm) if order == "conv-then-norm" else (norm, conv)
    second.input[0], first.output[0] = "b", "b"
    second.output[0] = "c"
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="pw1"), first, second,
             helper.make_node("Conv", ["c", "w2"], ["y"], name="pw2")]
    model = pm._model(nodes, inits, [1, 3, 4, 4], [1, 4, 4, 4], opset=21)
    what = "norm groups of 2" if order == "conv-then-norm" else "conv-groups of 4"
    blocks = "units of 4" if order == "conv-then-norm" else "units of 2"
    _closed(model, "pw1", f"{blocks} channels (heads or groups) and {what} differ")


# ---------------------------------------------------------------------- GroupNormalization


@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm_is_whole_norm_groups(opset):
    _, groups = _groups(pm.group_norm_block(opset))
    g = groups[("conv",)]
    assert g.prunable and g.block == 2 and g.units == 4
    per_unit = opset < 21  # opset 18: one scale/bias entry per norm group
    assert {("gn", "param", 1, 0, 1, per_unit), ("gn", "param", 2, 0, 1, per_unit),
            ("gn", "group", 0, 0, 2, False), ("c2", "in", 1, 1, 1, False)} <= _kinds(g)


@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm_prunes_whole_norm_groups_exactly(opset):
    """onnxruntime 1.32 runs GroupNormalization at opset 18 (scale/bias per norm group) and 21
    (per channel), though not each layout at the other opset: both are run."""
    model = pm.group_norm_block(opset)
    x = _x([1, 3, 5, 5])
    res = _prune(model, x, ratio=0.25)
    _check_norm(res.model, opset)
    w = _weights(res.model)
    assert w["conv"] == (6, 3, 3, 3) and w["c2"] == (4, 6, 1, 1)
    assert w["gn"] == ((6,) if opset >= 21 else (3,))
    assert _attr(res.model, "gn", "num_groups") == 3
    np.testing.assert_allclose(_run(res.model, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_group_norm_across_a_concat():
    model = pm.concat_grouped((4, 6), groups=5, op="GroupNormalization")
    _, groups = _groups(model)
    assert groups[("a",)].prunable and groups[("b",)].prunable and groups[("a",)].block == 2
    x = _x([1, 3, 4, 4])
    res = _prune(model, x, ratio=0.5)
    _check_norm(res.model, 21)
    assert _weights(res.model)["mid"] == (6,) and _attr(res.model, "mid", "num_groups") == 3
    assert _run(res.model, x).shape == (1, 4, 4, 4)


def test_group_norm_then_swish():
    """Shapes are inferred past the norm, so the Mul of a Swish after it knows its ranks."""
    inits = {"w": pm._w(8, 3, 1, 1, zero=(4, 5)), "s": pm._w(8), "t": pm._w(8, zero=(4, 5)),
             "w2": pm._w(4, 8, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("GroupNormalization", ["c", "s", "t"], ["n"], name="gn",
                              num_groups=4),
             helper.make_node("Sigmoid", ["n"], ["sg"], name="sig"),
             helper.make_node("Mul", ["n", "sg"], ["sw"], name="swish"),
             helper.make_node("Conv", ["sw", "w2"], ["y"], name="c2")]
    model = pm._model(nodes, inits, [1, 3, 4, 4], [1, 4, 4, 4], opset=21)
    _, groups = _groups(model)
    assert groups[("conv",)].prunable
    x = _x([1, 3, 4, 4])
    res = _prune(model, x, ratio=0.25)
    _check_norm(res.model, 21)
    assert _weights(res.model)["c2"] == (4, 6, 1, 1)
    np.testing.assert_allclose(_run(res.model, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_group_norm_not_in_whole_norm_groups_stays_closed():
    model = pm.concat_grouped((3, 5), groups=4, op="GroupNormalization")
    _closed(model, "a", "channel groups are not whole norm groups of 2 channels")


# ---------------------------------------------------------------------- Slice


def test_slice_at_group_boundaries():
    _, groups = _groups(pm.concat_slice())
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


@pytest.mark.parametrize("second,steps,starts,ends", [c[1:] for c in SLICES],
                         ids=[c[0] for c in SLICES])
def test_slice_prunes_exactly(second, steps, starts, ends):
    model = pm.concat_slice(second, steps)
    x = _x([1, 3, 4, 4])
    res = _prune(model, x, ratio=0.25)
    _check(res.model)
    w = _weights(res.model)
    assert (w["a"], w["b"], w["c"], w["d"]) == ((3, 3, 1, 1), (5, 3, 1, 1), (5, 3, 1, 1),
                                                (5, 5, 1, 1))
    assert _const(res.model, "slice0", 2) == [3]
    assert (_const(res.model, "slice1", 1), _const(res.model, "slice1", 2)) == (starts, ends)
    np.testing.assert_allclose(_run(res.model, x), _run(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("second,text", [
    (([3], [9], [1]), "slices inside a channel group"),
    (([-6], [10], [1]), "with a step or from its end"),
])
def test_slice_inside_a_group_stays_closed(second, text):
    _closed(pm.concat_slice(second), "a", text)
    _closed(pm.concat_slice(second), "b", text)


def test_slice_on_another_axis_keeps_the_layout():
    inits = {"w": pm._w(6, 3, 1, 1, zero=(2,)), "w2": pm._w(4, 6, 1, 1),
             "s": np.array([1], np.int64), "e": np.array([3], np.int64),
             "ax": np.array([2], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv"),
             helper.make_node("Slice", ["a", "s", "e", "ax"], ["b"], name="crop"),
             helper.make_node("Conv", ["b", "w2"], ["y"], name="c2")]
    model = pm._model(nodes, inits, [1, 3, 4, 4], [1, 4, 2, 4])
    _, groups = _groups(model)
    g = groups[("conv",)]
    assert g.prunable and not [m for m in g.members if m.node == "crop"]
    x = _x([1, 3, 4, 4])
    res = _prune(model, x, ratio=0.2)
    _check(res.model)
    assert _weights(res.model)["c2"] == (4, 5, 1, 1)
    np.testing.assert_allclose(_run(res.model, x), _run(model, x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- dry run


@pytest.mark.parametrize("build,producer,cells", [
    (pm.resnext_block, "pw1", ("16 -> 12", "4 channels")),
    (lambda: pm.group_norm_block(21), "conv", ("8 -> 6", "2 channels")),
    (pm.concat_slice, "b", ("6 -> 5", "channel")),
])
def test_dry_run_shows_the_group(tmp_path, build, producer, cells):
    path = tmp_path / "m.onnx"
    onnx.save(build(), path)
    res = CliRunner().invoke(_app(), ["prune", str(path), "--dry-run", "--ratio", "0.25",
                                           "--round-to", "1"],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    row = next(ln for ln in res.output.splitlines() if f" {producer} " in ln)
    assert all(c in row for c in (*cells, "prunable")), row
