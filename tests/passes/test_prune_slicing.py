"""Pruning keeps the model valid, coupled shapes agree, and removing dead channels is exact."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt.contract import PassContext, PassError
from onnxopt.data import Feeds
from onnxopt.errors import OptionError
from onnxopt.passes.prune.prune import Prune

from . import prune_models as pm


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def _prune(model: onnx.ModelProto, x: np.ndarray, **opts):
    """Prune a tiny hand-made graph: no width rounding unless asked (its groups are narrower
    than the hardware step ``round_to="auto"`` picks)."""
    feeds = Feeds([{"x": x}], synthesized=True, source="test")
    o = {"importance": "l2", "round_to": 1, **opts}
    return Prune.from_options(o).run_model(model, PassContext(feeds=feeds))


def _weights(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return {n.name: inits.get(n.input[1]) for n in model.graph.node if len(n.input) > 1}


def _check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)


CASES = [
    ("residual", pm.residual_block, [2, 4, 8, 8], 0.25,
     {"c1": (6, 4, 3, 3), "c2": (6, 6, 3, 3), "c3": (4, 6, 1, 1)}),
    ("concat", pm.concat_branches, [1, 3, 6, 6], 0.25,
     {"a": (5, 3, 3, 3), "b": (3, 3, 1, 1), "c": (5, 8, 3, 3)}),
    ("depthwise", pm.depthwise_separable, [1, 4, 5, 5], 0.375,
     {"pw1": (5, 4, 1, 1), "dw": (5, 1, 3, 3), "pw2": (4, 5, 1, 1), "bn": (5,)}),
    ("flatten", pm.flatten_gemm, [1, 2, 4, 4], 0.34, {"conv": (4, 2, 3, 3), "fc": (10, 64)}),
    ("split", pm.concat_split, [1, 3, 4, 4], 0.25,
     {"a": (3, 3, 1, 1), "b": (5, 3, 1, 1), "c": (5, 3, 1, 1), "d": (5, 5, 1, 1),
      "split": (2,)}),
    ("reshape", lambda: pm.flatten_gemm(True), [1, 2, 4, 4], 0.34,
     {"conv": (4, 2, 3, 3), "fc": (10, 64), "flat": (2,)}),
]


@pytest.mark.parametrize("name,build,shape,ratio,expect", CASES, ids=[c[0] for c in CASES])
def test_dead_channels_pruned_exactly(name, build, shape, ratio, expect):
    model = build()
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    res = _prune(model, x, ratio=ratio)
    assert res.changed and res.model is not None
    _check(res.model)
    got = _weights(res.model)
    for node, dims in expect.items():
        assert got[node] == dims, (node, got[node])
    np.testing.assert_allclose(_run(res.model, x), _run(model, x), rtol=1e-5, atol=1e-5)
    if name == "depthwise":
        dw = next(n for n in res.model.graph.node if n.name == "dw")
        assert onnx.helper.get_attribute_value(dw.attribute[0]) == 5 or any(
            a.name == "group" and a.i == 5 for a in dw.attribute)
    assert any("reconstruction" in n or "no real data" in n for n in res.notes)
    assert {r["group"] for r in res.details["groups"]}
    assert all(r["macs_after"] <= r["macs_before"] for r in res.details["layers"])


def test_attention_whole_heads_and_reshape_constants():
    model = pm.attention(zero_head=1)
    x = np.random.default_rng(2).standard_normal([1, 5, 16]).astype(np.float32)
    res = _prune(model, x, ratio=0.25)
    _check(res.model)
    w = _weights(res.model)
    assert w["q_proj"] == (16, 12) and w["o_proj"] == (12, 16)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in res.model.graph.initializer}
    nodes = {n.name: n for n in res.model.graph.node}
    assert inits[nodes["q_split"].input[1]].tolist() == [1, 5, 3, 4]
    assert inits[nodes["merge_heads"].input[1]].tolist() == [1, 5, 12]
    np.testing.assert_allclose(_run(res.model, x), _run(model, x), rtol=1e-5, atol=1e-5)
    heads = next(r for r in res.details["groups"] if r["block"] == 4)
    assert (heads["channels_before"], heads["channels_after"]) == (16, 12)


def test_round_to_and_max_ratio_and_min_one():
    model = pm.residual_block()
    x = np.ones([2, 4, 8, 8], np.float32)
    res = _prune(model, x, ratio=0.5, round_to=4)
    assert _weights(res.model)["c1"][0] == 4
    res = _prune(model, x, ratio=0.5, round_to=3)
    assert _weights(res.model)["c1"][0] == 6  # 4 kept, rounded up to a multiple of 3
    # a group exactly round_to wide stays whole: half a runtime block saves nothing
    res = _prune(model, x, ratio=0.5, round_to=8)
    assert res.model is None  # so nothing is left to prune
    # a narrower one is off the block whatever it keeps: not rounded
    res = _prune(model, x, ratio=0.5, round_to=16)
    assert _weights(res.model)["c1"][0] == 4
    res = _prune(model, x, ratio=0.99, max_ratio=0.5)
    assert _weights(res.model)["c1"][0] == 4
    res = _prune(model, x, ratio=0.99, max_ratio=0.99)
    assert _weights(res.model)["c1"][0] == 1  # never below one channel
    _check(res.model)


def test_target_flops_tops_up_to_the_target():
    """MACs per pixel: 4·16 + 16·16 + 16·4 = 384. Halving both groups (round_to 8) leaves 128
    (0.33); halving one leaves 224 (0.58), the closest plan within a 0.6 target."""
    from onnxopt.model import count_macs

    model = pm.conv_chain()
    x = np.random.default_rng(0).standard_normal([1, 4, 4, 4]).astype(np.float32)
    before = count_macs(model)[0]
    for glob in (False, True):
        res = _prune(model, x, target_flops=0.6, round_to=8, **{"global": glob})
        assert count_macs(res.model)[0] / before == pytest.approx(224 / 384)
        assert sorted(w[0] for k, w in _weights(res.model).items() if k != "c3") == [8, 16]
    res = _prune(model, x, target_flops=0.2, round_to=8)  # below what round_to 8 allows
    assert count_macs(res.model)[0] / before == pytest.approx(128 / 384)
    assert any("not reached" in n for n in res.notes)


def test_target_flops_reaches_the_target():
    model = pm.concat_branches()
    x = np.ones([1, 3, 6, 6], np.float32)
    from onnxopt.model import count_macs

    before = count_macs(model)[0]
    for glob in (False, True):
        res = _prune(model, x, target_flops=0.6, **{"global": glob})
        after = count_macs(res.model)[0]
        assert after <= 0.6 * before + 1
        assert after >= 0.3 * before


def test_nothing_prunable_leaves_model_unchanged():
    model = pm.unknown_op()
    res = _prune(model, np.ones([1, 3, 4, 4], np.float32), keep=["c2"])
    assert not res.changed and res.model is None
    assert any("no prunable channel group" in n for n in res.notes)
    assert any("LpNormalization" in n for n in res.notes)


def test_bad_options_raise():
    with pytest.raises(OptionError, match="ratio"):
        _prune(pm.residual_block(), np.ones([2, 4, 8, 8], np.float32), ratio=1.5)
    with pytest.raises(OptionError, match="importance"):
        _prune(pm.residual_block(), np.ones([2, 4, 8, 8], np.float32), importance="magic")
    with pytest.raises(PassError, match="needs real data"):
        _prune(pm.residual_block(), np.ones([2, 4, 8, 8], np.float32), importance="activation")


def test_round_to_auto_is_the_default_and_uses_the_cpu_block():
    """By default kept widths are multiples of onnxruntime's channel block on this CPU (16 with
    AVX-512, 8 with AVX2), and the report says so."""
    from onnxopt.passes.prune.config import PruneConfig
    from onnxopt.passes.prune.plan import round_to
    from onnxopt.passes.prune.targets import auto_round_to

    step = auto_round_to()
    assert step in (8, 16)
    assert round_to(PruneConfig()) == step
    assert round_to(PruneConfig.from_options({"round_to": "3"})) == 3
    with pytest.raises(OptionError, match="round_to must be 'auto' or an integer"):
        PruneConfig.from_options({"round_to": "x"})
    model = pm.conv_chain(width=32)
    x = np.random.default_rng(0).standard_normal([1, 4, 4, 4]).astype(np.float32)
    feeds = Feeds([{"x": x}], synthesized=True, source="test")
    res = Prune.from_options({"ratio": 0.5}).run_model(model, PassContext(feeds=feeds))
    widths = [w[0] for k, w in _weights(res.model).items() if k != "c3"]
    assert widths == [16, 16] and all(w % step == 0 for w in widths)
    assert any(f"multiples of {step} (auto" in n for n in res.notes)


def test_readers_of_a_shared_weight_share_its_slice():
    """A weight shared by two convs (dedup-initializers makes such graphs) pruned alike becomes
    one sliced initializer, not a copy per reader; dead channels 2 and 6 go, outputs stay."""
    model = pm.shared_weight()
    x = np.random.default_rng(0).standard_normal([1, 4, 4, 4]).astype(np.float32)
    res = _prune(model, x, ratio=0.25)
    nodes = {n.name: n for n in res.model.graph.node}
    assert nodes["ca"].input[1] == nodes["cb"].input[1]
    inits = {t.name: tuple(t.dims) for t in res.model.graph.initializer}
    assert inits[nodes["ca"].input[1]] == (6, 4, 1, 1) and "w" not in inits
    np.testing.assert_allclose(_run(res.model, x), _run(model, x), rtol=1e-5, atol=1e-5)
    _check(res.model)
