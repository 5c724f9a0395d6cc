"""Pruning through grouped convs (whole conv-groups); the cases that must stay closed keep a
note."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from . import prune_models as pm
from .test_prune_cli import _app
from .test_prune_groups import _groups
from .test_prune_slicing import _check, _prune, _run, _weights


def _x(shape: list[int], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _attr(model: onnx.ModelProto, node: str, name: str) -> int:
    n = next(n for n in model.graph.node if n.name == node)
    return next(a.i for a in n.attribute if a.name == name)


def _kinds(g) -> set:
    return {(m.node, m.kind, m.index, m.axis, m.expand, m.unit) for m in g.members}


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


# ---------------------------------------------------------------------- dry run


@pytest.mark.parametrize("build,producer,cells", [
    (pm.resnext_block, "pw1", ("16 -> 12", "4 channels")),
])
def test_dry_run_shows_the_group(tmp_path, build, producer, cells):
    path = tmp_path / "m.onnx"
    onnx.save(build(), path)
    res = CliRunner().invoke(_app(), ["prune", str(path), "--dry-run", "--ratio", "0.25"],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    row = next(ln for ln in res.output.splitlines() if f" {producer} " in ln)
    assert all(c in row for c in (*cells, "prunable")), row
