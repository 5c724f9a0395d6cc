"""Slicing keeps the model valid, coupled shapes agree, and removing dead channels is exact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from . import models as pm
from .support import check, output, prune, weight_shapes

CASES = [
    (
        "residual",
        pm.residual_block,
        [2, 4, 8, 8],
        0.25,
        {"c1": (6, 4, 3, 3), "c2": (6, 6, 3, 3), "c3": (4, 6, 1, 1)},
    ),
    (
        "concat",
        pm.concat_branches,
        [1, 3, 6, 6],
        0.25,
        {"a": (5, 3, 3, 3), "b": (3, 3, 1, 1), "c": (5, 8, 3, 3)},
    ),
    (
        "depthwise",
        pm.depthwise_separable,
        [1, 4, 5, 5],
        0.375,
        {"pw1": (5, 4, 1, 1), "dw": (5, 1, 3, 3), "pw2": (4, 5, 1, 1), "bn": (5,)},
    ),
    ("flatten", pm.flatten_gemm, [1, 2, 4, 4], 0.34, {"conv": (4, 2, 3, 3), "fc": (10, 64)}),
    (
        "split",
        pm.concat_split,
        [1, 3, 4, 4],
        0.25,
        {"a": (3, 3, 1, 1), "b": (5, 3, 1, 1), "c": (5, 3, 1, 1), "d": (5, 5, 1, 1), "split": (2,)},
    ),
    (
        "reshape",
        lambda: pm.flatten_gemm(True),
        [1, 2, 4, 4],
        0.34,
        {"conv": (4, 2, 3, 3), "fc": (10, 64), "flat": (2,)},
    ),
]


@pytest.mark.parametrize("name,build,shape,ratio,expect", CASES, ids=[c[0] for c in CASES])
def test_dead_channels_pruned_exactly(name, build, shape, ratio, expect):
    model = build()
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    res = prune(model, x, ratio=ratio)
    assert res.changed and res.model is not None
    check(res.model)
    got = weight_shapes(res.model)
    for node, dims in expect.items():
        assert got[node] == dims, (node, got[node])
    np.testing.assert_allclose(output(res.model, x), output(model, x), rtol=1e-5, atol=1e-5)
    if name == "depthwise":
        dw = next(n for n in res.model.graph.node if n.name == "dw")
        assert onnx.helper.get_attribute_value(dw.attribute[0]) == 5 or any(
            a.name == "group" and a.i == 5 for a in dw.attribute
        )
    assert any("reconstruction" in n or "no real data" in n for n in res.notes)
    assert {r["group"] for r in res.details["groups"]}
    assert all(r["macs_after"] <= r["macs_before"] for r in res.details["layers"])


def test_attention_whole_heads_and_reshape_constants():
    model = pm.attention(zero_head=1)
    x = np.random.default_rng(2).standard_normal([1, 5, 16]).astype(np.float32)
    res = prune(model, x, ratio=0.25)
    check(res.model)
    w = weight_shapes(res.model)
    assert w["q_proj"] == (16, 12) and w["o_proj"] == (12, 16)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in res.model.graph.initializer}
    nodes = {n.name: n for n in res.model.graph.node}
    assert inits[nodes["q_split"].input[1]].tolist() == [1, 5, 3, 4]
    assert inits[nodes["merge_heads"].input[1]].tolist() == [1, 5, 12]
    np.testing.assert_allclose(output(res.model, x), output(model, x), rtol=1e-5, atol=1e-5)
    heads = next(r for r in res.details["groups"] if r["block"] == 4)
    assert (heads["channels_before"], heads["channels_after"]) == (16, 12)


def test_nothing_prunable_leaves_model_unchanged():
    model = pm.unknown_op()
    res = prune(model, np.ones([1, 3, 4, 4], np.float32), keep=["c2"])
    assert not res.changed and res.model is None
    assert any("no prunable channel group" in n for n in res.notes)
    assert any("LpNormalization" in n for n in res.notes)


def test_readers_of_a_shared_weight_share_its_slice():
    """A weight shared by two convs (dedup-initializers makes such graphs) pruned alike becomes
    one sliced initializer, not a copy per reader; dead channels 2 and 6 go, outputs stay."""
    model = pm.shared_weight()
    x = np.random.default_rng(0).standard_normal([1, 4, 4, 4]).astype(np.float32)
    res = prune(model, x, ratio=0.25)
    nodes = {n.name: n for n in res.model.graph.node}
    assert nodes["ca"].input[1] == nodes["cb"].input[1]
    inits = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    assert inits[nodes["ca"].input[1]] == (6, 4, 1, 1) and "w" not in inits
    np.testing.assert_allclose(output(res.model, x), output(model, x), rtol=1e-5, atol=1e-5)
    check(res.model)
