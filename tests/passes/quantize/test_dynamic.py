"""quantize-dynamic: MatMul/Gemm with constant weights to DynamicQuantizeMatMul."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes.quantize import QuantizeDynamic
from tests.helpers import parse

from .support import cos, outputs

RNG = np.random.default_rng(1)


def test_dynamic_matmul_becomes_dynamic_quantize_matmul(tmp_path) -> None:
    from onnxopt.graph import to_graph, to_model

    text = """
    <ir_version: 8, opset_import: ["": 17]>
    g (float[2,32] x) => (float[2,16] y) {
        y = Gemm <transB = 1> (x, W, B)
    }
    """
    m = parse(
        text,
        dict(
            W=RNG.standard_normal((16, 32)).astype(np.float32),
            B=RNG.standard_normal(16).astype(np.float32),
        ),
    )
    g = to_graph(m)
    res = QuantizeDynamic().run(g, PassContext())
    q = to_model(g, like=m)
    assert res.rewrites == 1 and "MatMulInteger" in [n.op_type for n in q.graph.node]
    feeds = Feeds([{"x": RNG.standard_normal((2, 32)).astype(np.float32)} for _ in range(4)])
    opt = tmp_path / "opt.onnx"
    out = outputs(q, feeds, optimized=str(opt))
    assert [n.op_type for n in onnx.load(str(opt)).graph.node] == ["DynamicQuantizeMatMul"]
    assert cos(outputs(m, feeds), out) > 0.999


def test_dynamic_upgrades_an_old_opset() -> None:
    """DynamicQuantizeLinear needs opset 11: an opset-9 MatMul model is converted first."""
    model = parse(
        '<ir_version: 4, opset_import: ["": 9]>\n'
        "g (float[2,8] x) => (float[2,4] y) { y = MatMul(x, W) }",
        dict(W=RNG.standard_normal((8, 4)).astype(np.float32)),
    )
    res, out = QuantizeDynamic().apply(model, PassContext())
    assert res.changed and res.notes[0] == "opset 9 upgraded to 13 (onnx version converter)"
    onnx.checker.check_model(out)
    assert "DynamicQuantizeLinear" in {n.op_type for n in out.graph.node}
    feeds = Feeds([{"x": RNG.standard_normal((2, 8)).astype(np.float32)}])
    assert cos(outputs(out, feeds), outputs(model, feeds)) > 0.999
    assert model.opset_import[0].version == 9  # the input is left alone
