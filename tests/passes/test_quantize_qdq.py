"""QDQ insertion on tiny graphs: exact scales / zero points, int32 bias, int8 kernels in ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes.quantize import QuantizeDynamic, QuantizeInt8
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.passes.quantize.qdq import activation_params

RNG = np.random.default_rng(1)


def _model(text: str, **inits: np.ndarray) -> onnx.ModelProto:
    m = onnx.parser.parse_model(text)
    m.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in inits.items())
    onnx.checker.check_model(m)
    return m


def _run(model: onnx.ModelProto, feeds: Feeds, *, optimized: str | None = None) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if optimized is None:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    else:
        so.optimized_model_filepath = optimized
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, r)[0] for r in feeds.runs])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


CONV_RELU_CONV = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,2,4,4] x) => (float[1,3,4,4] y) {
    c1 = Conv <pads = [1,1,1,1]> (x, W1, B1)
    r1 = Relu (c1)
    y = Conv <pads = [1,1,1,1]> (r1, W2, B2)
}
"""


@pytest.fixture
def conv_model() -> onnx.ModelProto:
    return _model(
        CONV_RELU_CONV,
        W1=RNG.standard_normal((4, 2, 3, 3)).astype(np.float32),
        B1=RNG.standard_normal(4).astype(np.float32),
        W2=RNG.standard_normal((3, 4, 3, 3)).astype(np.float32),
        B2=RNG.standard_normal(3).astype(np.float32),
    )


def _feeds(n: int = 16, shape=(1, 2, 4, 4)) -> Feeds:
    return Feeds([{"x": RNG.uniform(-1.0, 2.0, shape).astype(np.float32)} for _ in range(n)])


def _init(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _dq_inputs(model: onnx.ModelProto, consumer: str, index: int) -> onnx.NodeProto:
    by_out = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == consumer)
    return by_out[node.input[index]]


def test_conv_scales_zero_points_and_int32_bias(conv_model: onnx.ModelProto) -> None:
    feeds = _feeds()
    res = QuantizeInt8(QuantizeConfig(calibrator="minmax")).run_model(conv_model, PassContext(feeds=feeds))
    q = res.model
    onnx.checker.check_model(q, full_check=True)
    assert res.changed and res.rewrites == 2
    assert res.details["counts"]["relu_folded"] == 1
    ops = [n.op_type for n in q.graph.node]
    assert "Relu" not in ops and ops.count("Conv") == 2
    init = _init(q)
    conv1 = next(n for n in q.graph.node if n.op_type == "Conv")
    # input activation: uint8 asymmetric over the exact calibration min/max
    xs = np.concatenate([r["x"].ravel() for r in feeds.runs])
    want = activation_params(float(xs.min()), float(xs.max()))
    dq_x = _dq_inputs(q, conv1.name, 0)
    assert init[dq_x.input[1]] == np.float32((max(xs.max(), 0) - min(xs.min(), 0)) / 255)
    assert init[dq_x.input[2]].dtype == np.uint8
    assert int(init[dq_x.input[2]]) == want.zero_point == round(-xs.min() / want.scale)
    # weights: int8 symmetric per output channel
    dq_w = _dq_inputs(q, conv1.name, 1)
    w1 = _init(conv_model)["W1"]
    ws = np.abs(w1).reshape(4, -1).max(1) / 127
    np.testing.assert_allclose(init[dq_w.input[1]], ws, rtol=1e-6)
    assert init[dq_w.input[0]].dtype == np.int8 and np.abs(init[dq_w.input[0]]).max() == 127
    assert next(a.i for a in dq_w.attribute if a.name == "axis") == 0
    # bias: int32 with scale x_scale * w_scale
    dq_b = _dq_inputs(q, conv1.name, 2)
    assert init[dq_b.input[0]].dtype == np.int32
    np.testing.assert_allclose(init[dq_b.input[1]], init[dq_x.input[1]] * init[dq_w.input[1]],
                               rtol=1e-6)
    np.testing.assert_array_equal(
        init[dq_b.input[0]],
        np.round(_init(conv_model)["B1"] / init[dq_b.input[1]]).astype(np.int32))
    # the folded ReLU: the Q after conv1 has zero point 0 (uint8 min), so it clamps at 0
    q1 = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "c1")
    assert int(init[q1.input[2]]) == 0
    assert _cos(_run(conv_model, feeds), _run(q, feeds)) > 0.999


def test_int8_kernels_after_ort_optimization(conv_model: onnx.ModelProto, tmp_path) -> None:
    feeds = _feeds()
    q = QuantizeInt8().run_model(conv_model, PassContext(feeds=feeds)).model
    opt = tmp_path / "opt.onnx"
    _run(q, feeds, optimized=str(opt))
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
    m = _model(text, W1=RNG.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3,
               B1=RNG.standard_normal(4).astype(np.float32),
               W2=RNG.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3,
               B2=RNG.standard_normal(4).astype(np.float32),
               Wf=RNG.standard_normal((10, 4)).astype(np.float32),
               Bf=RNG.standard_normal(10).astype(np.float32))
    feeds = _feeds(16, (1, 4, 8, 8))
    q = QuantizeInt8().run_model(m, PassContext(feeds=feeds)).model
    opt = tmp_path / "opt.onnx"
    _run(q, feeds, optimized=str(opt))
    ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
    assert ops.count("QLinearConv") == 2 and "QLinearAdd" in ops and "QGemm" in ops
    assert "QLinearGlobalAveragePool" in ops
    # no float op sandwiched between a DQ and a Q where an int8 kernel exists
    assert not {"Conv", "Add", "Gemm", "Relu", "DequantizeLinear"} & set(ops)
    assert _cos(_run(m, feeds), _run(q, feeds)) > 0.999


def test_per_tensor_int8_sym_and_matmul() -> None:
    text = """
    <ir_version: 8, opset_import: ["": 17]>
    g (float[4,16] x) => (float[4,8] y) {
        h = MatMul (x, W)
        y = MatMul (h, V)
    }
    """
    m = _model(text, W=RNG.standard_normal((16, 8)).astype(np.float32),
               V=RNG.standard_normal((8, 8)).astype(np.float32))
    feeds = Feeds([{"x": RNG.standard_normal((4, 16)).astype(np.float32)} for _ in range(16)])
    res = QuantizeInt8(QuantizeConfig(per_channel=False, activations="int8-sym", calibrator="minmax")).run_model(
        m, PassContext(feeds=feeds))
    init = _init(res.model)
    for n in res.model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert init[n.input[1]].ndim == 0  # per tensor everywhere
            assert init[n.input[2]].dtype == np.int8 and int(init[n.input[2]]) == 0
    assert _cos(_run(m, feeds), _run(res.model, feeds)) > 0.999


def test_negative_constant_add_and_exclude_stay_float(conv_model: onnx.ModelProto) -> None:
    text = """
    <ir_version: 8, opset_import: ["": 17]>
    g (float[1,4] x) => (float[1,4] y) {
        y = Add (x, C)
    }
    """
    m = _model(text, C=np.ones(4, np.float32))
    res = QuantizeInt8().run_model(m, PassContext(feeds=Feeds([{"x": np.ones((1, 4), np.float32)}])))
    assert not res.changed and any("constant operand" in n for n in res.notes)
    res = QuantizeInt8(QuantizeConfig(exclude=["Conv"])).run_model(conv_model, PassContext(feeds=_feeds()))
    assert not res.changed


def test_too_few_samples_warns(conv_model: onnx.ModelProto) -> None:
    res = QuantizeInt8().run_model(conv_model, PassContext(feeds=_feeds(4)))
    assert any("only 4 calibration samples" in n for n in res.notes)


def test_dynamic_matmul_becomes_dynamic_quantize_matmul(tmp_path) -> None:
    from onnxopt.graph import to_graph, to_model

    text = """
    <ir_version: 8, opset_import: ["": 17]>
    g (float[2,32] x) => (float[2,16] y) {
        y = Gemm <transB = 1> (x, W, B)
    }
    """
    m = _model(text, W=RNG.standard_normal((16, 32)).astype(np.float32),
               B=RNG.standard_normal(16).astype(np.float32))
    g = to_graph(m)
    res = QuantizeDynamic().run(g, PassContext())
    q = to_model(g, like=m)
    assert res.rewrites == 1 and "MatMulInteger" in [n.op_type for n in q.graph.node]
    feeds = Feeds([{"x": RNG.standard_normal((2, 32)).astype(np.float32)} for _ in range(4)])
    opt = tmp_path / "opt.onnx"
    out = _run(q, feeds, optimized=str(opt))
    assert [n.op_type for n in onnx.load(str(opt)).graph.node] == ["DynamicQuantizeMatMul"]
    assert _cos(_run(m, feeds), out) > 0.999


def test_old_opset_is_upgraded_then_quantized() -> None:
    """An opset-9 model (no QuantizeLinear before 10, no per-channel scales before 13) is
    converted by onnx's version converter, as onnxruntime's quantizer does, then quantized."""
    text = CONV_RELU_CONV.replace('<ir_version: 8, opset_import: ["": 17]>',
                                  '<ir_version: 4, opset_import: ["": 9]>')
    model = _model(
        text,
        W1=RNG.standard_normal((4, 2, 3, 3)).astype(np.float32),
        B1=RNG.standard_normal(4).astype(np.float32),
        W2=RNG.standard_normal((3, 4, 3, 3)).astype(np.float32),
        B2=RNG.standard_normal(3).astype(np.float32),
    )
    feeds = _feeds()
    res, q = QuantizeInt8().apply(model, PassContext(feeds=feeds))
    assert res.changed and res.notes[0] == "opset 9 upgraded to 13 (onnx version converter)"
    assert model.opset_import[0].version == 9  # the input is left alone
    onnx.checker.check_model(q)
    assert q.opset_import[0].version == 13
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) >= 2
    conv = next(n.name for n in q.graph.node if n.op_type == "Conv")
    w_dq = _dq_inputs(q, conv, 1)
    assert w_dq.op_type == "DequantizeLinear"
    assert _init(q)[w_dq.input[1]].shape == (4,)  # per-channel weight scales
    assert _cos(_run(q, feeds), _run(model, feeds)) > 0.999


def test_dynamic_upgrades_an_old_opset() -> None:
    """DynamicQuantizeLinear needs opset 11: an opset-9 MatMul model is converted first."""
    model = _model('<ir_version: 4, opset_import: ["": 9]>\n'
                   "g (float[2,8] x) => (float[2,4] y) { y = MatMul(x, W) }",
                   W=RNG.standard_normal((8, 4)).astype(np.float32))
    res, out = QuantizeDynamic().apply(model, PassContext())
    assert res.changed and res.notes[0] == "opset 9 upgraded to 13 (onnx version converter)"
    onnx.checker.check_model(out)
    assert "DynamicQuantizeLinear" in {n.op_type for n in out.graph.node}
    feeds = Feeds([{"x": RNG.standard_normal((2, 8)).astype(np.float32)}])
    assert _cos(_run(out, feeds), _run(model, feeds)) > 0.999
    assert model.opset_import[0].version == 9  # the input is left alone
