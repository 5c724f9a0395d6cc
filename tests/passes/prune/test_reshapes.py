"""Flatten / Reshape and reads of a pruned shape (Shape, Size), and GroupNorm decomposed as
torch exports it, on hand-made graphs: Reshape to ``[N, G, -1]``, InstanceNormalization with
``G`` scale/bias entries, Reshape back and Mul/Add by gamma/beta prune in whole norm groups;
shapes that do not restore the channel layout keep a note. The exported models themselves:
test_reshapes_torch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from . import models as pm
from .support import analyze_groups, check, constants, output, prune


def test_flatten_and_reshape_into_gemm_expand():
    for reshape in (False, True):
        _, groups = analyze_groups(pm.flatten_gemm(reshape=reshape))
        g = groups[("conv",)]
        assert g.prunable
        assert [(m.node, m.axis, m.expand) for m in g.members if m.kind == "in"] == [("fc", 1, 16)]
        shape = [(m.node, m.axis, m.expand) for m in g.members if m.kind == "shape"]
        assert shape == ([("flat", 1, 16)] if reshape else [])


# ---------------------------------------------------------------------- reads of a pruned shape


@pm._seeded
def shape_reader(reader: str) -> onnx.ModelProto:
    """x -> c1 (8) -> Relu -> c2 (4) -> y, and a second output computed from ``Shape(r1)``:

    - ``reshape-untracked``: Concat(x, x) reshaped to ``Shape(r1)`` (needs the 8 channels);
    - ``reshape-other-group``: conv c3's output (its own group) reshaped to ``Shape(r1)``;
    - ``gather-channel``: the channel entry ``Shape(r1)[1]`` itself;
    - ``gather-batch``: x flattened to ``[Shape(r1)[0], -1]``;
    - ``slice-spatial``: zeros of shape ``Shape(r1)[2:4]``.
    """
    inits = {
        "w1": pm._w(8, 4, 1, 1),
        "w2": pm._w(4, 8, 1, 1),
        "axes0": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
        "two": np.array([2], np.int64),
        "four": np.array([4], np.int64),
        "zero": np.array(0, np.int64),
        "one": np.array(1, np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="c2"),
        helper.make_node("Shape", ["r1"], ["s"], name="shape"),
    ]
    if reader == "reshape-other-group":  # another group's tensor reshaped to Shape(r1)
        inits["w3"], inits["w4"] = pm._w(8, 4, 1, 1), pm._w(4, 8, 1, 1)
        nodes += [
            helper.make_node("Conv", ["x", "w3"], ["c3"], name="c3"),
            helper.make_node("Reshape", ["c3", "s"], ["z"], name="reshape"),
            helper.make_node("Conv", ["z", "w4"], ["y2"], name="c4"),
        ]
        y2 = helper.make_tensor_value_info("y2", TensorProto.FLOAT, [2, 4, 8, 8])
    elif reader == "reshape-untracked":
        nodes += [
            helper.make_node("Concat", ["x", "x"], ["u"], name="cat", axis=1),
            helper.make_node("Reshape", ["u", "s"], ["y2"], name="reshape"),
        ]
        y2 = helper.make_tensor_value_info("y2", TensorProto.FLOAT, [2, 8, 8, 8])
    elif reader == "gather-channel":
        nodes += [helper.make_node("Gather", ["s", "one"], ["y2"], name="gather")]
        y2 = helper.make_tensor_value_info("y2", TensorProto.INT64, [])
    elif reader == "gather-batch":
        nodes += [
            helper.make_node("Gather", ["s", "zero"], ["n"], name="gather"),
            helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsq"),
            helper.make_node("Concat", ["n1", "minus1"], ["shp"], name="cat", axis=0),
            helper.make_node("Reshape", ["x", "shp"], ["y2"], name="reshape"),
        ]
        y2 = helper.make_tensor_value_info("y2", TensorProto.FLOAT, [2, 256])
    else:
        nodes += [
            helper.make_node("Slice", ["s", "two", "four"], ["hw"], name="slice"),
            helper.make_node("ConstantOfShape", ["hw"], ["y2"], name="zeros"),
        ]
        y2 = helper.make_tensor_value_info("y2", TensorProto.FLOAT, [8, 8])
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8, 8]), y2],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def test_a_read_channel_count_closes_the_group():
    """Shape(t) of a pruned t changes value: a reader that needs the old channel count (an
    untracked tensor reshaped to it, the entry itself) closes t's group; readers of the other
    entries (batch, spatial) leave it prunable."""
    for reader, prunable in (
        ("reshape-untracked", False),
        ("gather-channel", False),
        ("gather-batch", True),
        ("slice-spatial", True),
    ):
        a, groups = analyze_groups(shape_reader(reader))
        g = groups[("c1",)]
        assert g.prunable is prunable, reader
        if not prunable:
            assert any("channel count of 'r1'" in r for r in g.closed), g.closed
    # a tensor of another group reshaped to Shape(r1) would need both pruned alike: both close
    _, groups = analyze_groups(shape_reader("reshape-other-group"))
    assert not groups[("c1",)].prunable and not groups[("c3",)].prunable


# ---------------------------------------------------------------------- GroupNorm as torch exports it, hand-made


def _shape(model: onnx.ModelProto, reshape: str) -> list[int]:
    """A Reshape's constant shape, or the concatenated constants that build it."""
    inits, nodes = constants(model), {n.output[0]: n for n in model.graph.node}
    t = next(n for n in model.graph.node if n.name == reshape).input[1]
    parts = nodes[t].input if t in nodes and nodes[t].op_type == "Concat" else [t]
    return np.concatenate([inits[i] for i in parts]).tolist()


SHAPES = [("minus-one", "shape"), ("explicit", "constant"), ("concat", "concat")]


@pytest.mark.parametrize("split,back", SHAPES, ids=[f"{s}-{b}" for s, b in SHAPES])
def test_dead_norm_group_pruned_exactly(split, back):
    """Norm group 1 is zero in the conv and in beta: it normalizes to 0 (its own statistics),
    so removing it leaves every other norm group's statistics and the output unchanged. The G
    entry shrinks wherever it lives (a constant or a Concat piece), an explicit rest entry
    (C/G·H·W = 32) stays, and a constant shape back has its channel entry shrunk."""
    model = pm.torch_group_norm(split, back)
    x = np.random.default_rng(1).standard_normal([1, 8, 4, 4]).astype(np.float32)
    res = prune(model, x, ratio=0.25)
    check(res.model)
    assert _shape(res.model, "split") == {"explicit": [1, 3, 32]}.get(split, [0, 3, -1])
    if back != "shape":
        assert _shape(res.model, "merge") == [1, 6, 4, 4]
    inits, nodes = constants(res.model), {n.name: n for n in res.model.graph.node}
    assert inits[nodes["inorm"].input[1]].shape == (3,)
    assert inits[nodes["conv"].input[1]].shape == (6, 8, 1, 1)
    np.testing.assert_allclose(output(res.model, x), output(model, x), rtol=1e-5, atol=1e-5)


def test_concatenated_convs_into_decomposed_group_norm():
    model = pm.torch_group_norm(sizes=(4, 4))
    _, groups = analyze_groups(model)
    assert all(groups[(p,)].prunable and groups[(p,)].block == 2 for p in ("conv0", "conv1"))
    x = np.random.default_rng(1).standard_normal([1, 8, 4, 4]).astype(np.float32)
    res = prune(model, x, ratio=0.5)
    check(res.model)
    assert output(res.model, x).shape == (1, 4, 4, 4)
    assert _shape(res.model, "split") == [0, 2, -1]


@pytest.mark.parametrize(
    "kwargs,text",
    [
        (
            {"back": "input"},
            "shape entry 1 is read from the shape of 'x', whose axis is not made of "
            "the same channels",
        ),
        (
            {"back": "pairs"},
            "reshape [1, 4, 32] -> [1, 2, 64] does not merge whole units back into channels",
        ),
        ({"sizes": (3, 5)}, "channel groups are not whole units of 2 channels"),
    ],
    ids=["back-to-another-shape", "back-not-restoring", "not-whole-norm-groups"],
)
def test_decomposed_group_norm_that_does_not_fit_stays_closed(kwargs, text):
    a, groups = analyze_groups(pm.torch_group_norm(**kwargs))
    for p in [p for p in groups if p != ("c2",)]:
        assert not groups[p].prunable and any(text in r for r in groups[p].closed), groups[p]
    assert any(text in n for n in a.notes)
