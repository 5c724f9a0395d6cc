"""QDQ insertion on tiny graphs: exact scales / zero points, int32 bias, int8 kernels in ORT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes.quantize import QuantizeInt8
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.passes.quantize.qdq import activation_params
from tests.helpers import parse

from .support import (
    PLAN_KW,
    conv_relu_conv,
    cos,
    initializers,
    outputs,
    producer_of_input,
)

RNG = np.random.default_rng(1)


@pytest.fixture
def conv_model() -> onnx.ModelProto:
    return conv_relu_conv(RNG)


def _feeds(n: int = 16, shape=(1, 2, 4, 4)) -> Feeds:
    return Feeds([{"x": RNG.uniform(-1.0, 2.0, shape).astype(np.float32)} for _ in range(n)])


def test_conv_scales_zero_points_and_int32_bias(conv_model: onnx.ModelProto) -> None:
    feeds = _feeds()
    config = QuantizeConfig(calibrator="minmax", bias_correction="off")
    res = QuantizeInt8(config).run_model(conv_model, PassContext(feeds=feeds, allow_slower=True))
    q = res.model
    onnx.checker.check_model(q, full_check=True)
    assert res.changed and res.rewrites == 2
    assert res.details["counts"]["relu_folded"] == 1
    ops = [n.op_type for n in q.graph.node]
    assert "Relu" not in ops and ops.count("Conv") == 2
    init = initializers(q)
    conv1 = next(n for n in q.graph.node if n.op_type == "Conv")
    # input activation: uint8 asymmetric over the exact calibration min/max
    xs = np.concatenate([r["x"].ravel() for r in feeds.runs])
    want = activation_params(float(xs.min()), float(xs.max()))
    dq_x = producer_of_input(q, conv1.name, 0)
    assert init[dq_x.input[1]] == np.float32((max(xs.max(), 0) - min(xs.min(), 0)) / 255)
    assert init[dq_x.input[2]].dtype == np.uint8
    assert int(init[dq_x.input[2]]) == want.zero_point == round(-xs.min() / want.scale)
    # weights: int8 symmetric per output channel
    dq_w = producer_of_input(q, conv1.name, 1)
    w1 = initializers(conv_model)["W1"]
    ws = np.abs(w1).reshape(4, -1).max(1) / 127
    np.testing.assert_allclose(init[dq_w.input[1]], ws, rtol=1e-6)
    assert init[dq_w.input[0]].dtype == np.int8 and np.abs(init[dq_w.input[0]]).max() == 127
    assert next(a.i for a in dq_w.attribute if a.name == "axis") == 0
    # bias: int32 with scale x_scale * w_scale
    dq_b = producer_of_input(q, conv1.name, 2)
    assert init[dq_b.input[0]].dtype == np.int32
    np.testing.assert_allclose(
        init[dq_b.input[1]], init[dq_x.input[1]] * init[dq_w.input[1]], rtol=1e-6
    )
    np.testing.assert_array_equal(
        init[dq_b.input[0]],
        np.round(initializers(conv_model)["B1"] / init[dq_b.input[1]]).astype(np.int32),
    )
    # the folded ReLU: the Q after conv1 has zero point 0 (uint8 min), so it clamps at 0
    q1 = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "c1")
    assert int(init[q1.input[2]]) == 0
    assert cos(outputs(conv_model, feeds), outputs(q, feeds)) > 0.999


def test_int8_kernels_after_ort_optimization(conv_model: onnx.ModelProto, tmp_path) -> None:
    feeds = _feeds()
    q = QuantizeInt8().run_model(conv_model, PassContext(feeds=feeds, allow_slower=True)).model
    opt = tmp_path / "opt.onnx"
    outputs(q, feeds, optimized=str(opt))
    ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
    assert ops.count("QLinearConv") == 1  # conv1 (+ folded ReLU); conv2's output is the graph's
    assert "DequantizeLinear" in ops or "Conv" in ops  # conv2 feeds a float graph output
    assert "Relu" not in ops


def test_resnet_block_fully_int8(tmp_path) -> None:
    text = """
    <ir_version: 8, opset_import: ["": 17]>
    g (float[1,4,8,8] x) => (float[1,10] y) {
        a = Conv <pads = [1,1,1,1]> (x, W1, B1)
        ar = Relu (a)
        b = Conv <pads = [1,1,1,1]> (ar, W2, B2)
        s = Add (b, ar)
        sr = Relu (s)
        p = MaxPool <kernel_shape = [2,2], strides = [2,2]> (sr)
        gp = GlobalAveragePool (p)
        f = Flatten (gp)
        y = Gemm <transB = 1> (f, Wf, Bf)
    }
    """
    m = parse(
        text,
        dict(
            W1=RNG.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3,
            B1=RNG.standard_normal(4).astype(np.float32),
            W2=RNG.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3,
            B2=RNG.standard_normal(4).astype(np.float32),
            Wf=RNG.standard_normal((10, 4)).astype(np.float32),
            Bf=RNG.standard_normal(10).astype(np.float32),
        ),
    )
    feeds = _feeds(16, (1, 4, 8, 8))
    q = QuantizeInt8().run_model(m, PassContext(feeds=feeds, allow_slower=True)).model
    opt = tmp_path / "opt.onnx"
    outputs(q, feeds, optimized=str(opt))
    ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
    assert ops.count("QLinearConv") == 2 and "QLinearAdd" in ops and "QGemm" in ops
    assert "QLinearGlobalAveragePool" in ops
    # no float op sandwiched between a DQ and a Q where an int8 kernel exists
    assert not {"Conv", "Add", "Gemm", "Relu", "DequantizeLinear"} & set(ops)
    assert cos(outputs(m, feeds), outputs(q, feeds)) > 0.999


def test_per_tensor_int8_sym_and_matmul() -> None:
    text = """
    <ir_version: 8, opset_import: ["": 17]>
    g (float[4,16] x) => (float[4,8] y) {
        h = MatMul (x, W)
        y = MatMul (h, V)
    }
    """
    m = parse(
        text,
        dict(
            W=RNG.standard_normal((16, 8)).astype(np.float32),
            V=RNG.standard_normal((8, 8)).astype(np.float32),
        ),
    )
    feeds = Feeds([{"x": RNG.standard_normal((4, 16)).astype(np.float32)} for _ in range(16)])
    config = QuantizeConfig(
        per_channel=False, activations="int8-sym", calibrator="minmax", bias_correction="off"
    )
    res = QuantizeInt8(config).run_model(m, PassContext(feeds=feeds, allow_slower=True))
    init = initializers(res.model)
    for n in res.model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert init[n.input[1]].ndim == 0  # per tensor everywhere
            assert init[n.input[2]].dtype == np.int8 and int(init[n.input[2]]) == 0
    assert cos(outputs(m, feeds), outputs(res.model, feeds)) > 0.999


def test_builds_reuse_the_weights_rounded_by_the_first_and_write_the_same_model(
    monkeypatch,
) -> None:
    """A Builder keeps each weight (and embedding table) rounded to nearest by its first build:
    later builds read them back, and write the model a builder without the store writes."""
    from onnxopt.passes.quantize import qdq
    from onnxopt.passes.quantize.build import Builder
    from onnxopt.passes.quantize.prepare import prepare
    from tests.helpers import run

    rng = np.random.default_rng(3)
    m = parse(
        """
        <ir_version: 8, opset_import: ["": 17]>
        g (int64[4] ids) => (float[4,5] y) {
            e = Gather (T, ids)
            h = MatMul (e, W1)
            r = Relu (h)
            y = MatMul (r, W2)
        }
        """,
        {
            "T": rng.standard_normal((30, 12)).astype(np.float32),
            "W1": rng.standard_normal((12, 7)).astype(np.float32),
            "W2": rng.standard_normal((7, 5)).astype(np.float32),
        },
    )
    for i, node in enumerate(m.graph.node):
        node.name = f"n{i}"
    m = prepare(m)
    feed = {"ids": np.array([0, 3, 7, 29], np.int64)}
    ranges = {"e": (-3.0, 3.0), "h": (-6.0, 6.0), "r": (0.0, 6.0)}
    kw = PLAN_KW

    def builder() -> Builder:
        return Builder(m, m, ranges, kw, activations="uint8", reduce_range=False, per_axis_ok=True)

    build, fresh = builder(), builder()
    fresh.rounded = None  # rounds every weight at every build
    first = build({"n0", "n1", "n3"})
    assert {k[:2] for k in build.rounded} == {("table", "n0"), ("weight", "n1"), ("weight", "n3")}
    calls = []
    real = qdq.quantize_weight
    monkeypatch.setattr(qdq, "quantize_weight", lambda *a: calls.append(1) or real(*a))
    for enabled in ({"n0", "n3"}, {"n1"}, {"n0", "n1", "n3"}):
        a = build(enabled)
        assert not calls  # read back, not rounded again
        b = fresh(enabled)
        assert calls  # the builder without the store rounds them
        calls.clear()
        assert a.SerializeToString() == b.SerializeToString()
        np.testing.assert_array_equal(run(a, feed)[0], run(b, feed)[0])
    assert build({"n0", "n1", "n3"}).SerializeToString() == first.SerializeToString()
