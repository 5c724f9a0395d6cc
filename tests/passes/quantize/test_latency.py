"""Per-layer latency on this CPU: a layer int8 makes slower is left in float, and the notes say
so; the kernels onnxruntime runs are charged to the layers of the planned graph."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes.quantize import QuantizeInt8
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.passes.quantize.latency import Attribution
from tests.helpers import parse

RNG = np.random.default_rng(4)

#: a big convolution (37 M MACs: int8 pays) and a 1x1 convolution on a 2x2 map between two
#: float ops (int8 means a Q, a QLinearConv with layout transposes and a DQ around four MACs)
TWO_REGIONS = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,64,32,32] x, float[1,1,2,2] t) => (float[1,64,32,32] y, float[1,1,2,2] u) {
    c = Conv <pads = [1,1,1,1]> (x, W, B)
    y = Relu (c)
    a = Tanh (t)
    s = Conv (a, Ws, Bs)
    u = Tanh (s)
}
"""


def _model() -> onnx.ModelProto:
    m = parse(
        TWO_REGIONS,
        {
            "W": (RNG.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32),
            "B": RNG.standard_normal(64).astype(np.float32),
            "Ws": RNG.standard_normal((1, 1, 1, 1)).astype(np.float32),
            "Bs": RNG.standard_normal(1).astype(np.float32),
        },
    )
    for node in m.graph.node:
        if node.op_type == "Conv":
            node.name = "big" if node.input[1] == "W" else "tiny"
        else:
            node.name = node.output[0]
    return m


def test_a_region_int8_makes_slower_stays_float() -> None:
    m = _model()
    feeds = Feeds(
        [
            {
                "x": RNG.standard_normal((1, 64, 32, 32)).astype(np.float32),
                "t": RNG.standard_normal((1, 1, 2, 2)).astype(np.float32),
            }
            for _ in range(16)
        ]
    )
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    lat = res.details["latency"]
    assert lat["slower_in_int8"] == ["tiny"]
    assert res.changed and res.sites == ["big"]
    assert any(n.startswith("left float: tiny: slower in int8") for n in res.notes)
    tiny = next(n for n in res.model.graph.node if n.name == "tiny")
    assert list(tiny.input) == ["a", "Ws", "Bs"]  # untouched float weights


def test_kernels_are_charged_to_the_layers_they_come_from() -> None:
    m = _model()
    att = Attribution(m, {"big", "tiny"})
    assert att.owners("big_token_3") == ["big"]  # onnxruntime's QLinearConv
    assert att.owners("y_nchwc") == ["big"]  # NCHWc Conv with the Relu fused: the layer's
    assert att.owners("a_QuantizeLinear") == ["tiny"]  # a Q costs the layer that reads it
    assert att.owners("c_DequantizeLinear/duplicated") == ["big"]  # a DQ the one that made it
    assert att.owners("ReorderInput") == []  # left to the optimized graph's neighbours
