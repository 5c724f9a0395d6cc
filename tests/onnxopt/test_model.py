"""Model I/O: every way a file can be wrong, atomic writes, external data, the summary."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper, parser

from onnxopt.errors import ModelError
from onnxopt.model import load_model, save_model
from onnxopt.summary import ModelSummary

TEXT = """<ir_version: 8, opset_import: ["": 17]>
g (float[1,3,8,8] x) => (float[1,10] y)
<float[4,3,3,3] w = {%s}, float[10,256] fc>
{
  c = Conv<pads=[1,1,1,1]>(x, w)
  f = Flatten(c)
  y = Gemm<transB=1>(f, fc)
}"""


def conv_model():
    w = ",".join(["0.1"] * 108)
    m = parser.parse_model(TEXT % w)
    # parser cannot give fc a value inline here; fill it
    fc = numpy_helper.from_array(np.zeros((10, 256), np.float32), "fc")
    m.graph.initializer.append(fc)
    return m


def test_summary_counts_macs_params_ops():
    s = ModelSummary.of(conv_model())
    assert s.ops == {"Conv": 1, "Flatten": 1, "Gemm": 1}
    assert s.params == 108 + 2560
    # conv: 4*8*8 outputs * 3*3*3, gemm: 10 * 256
    assert s.flops == 4 * 64 * 27 + 10 * 256
    assert s.inputs[0].shape == [1, 3, 8, 8] and s.opset == 17


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a model")
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_model(bad)
    good = tmp_path / "good.onnx"
    save_model(conv_model(), good)
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(good.read_bytes()[:-300])
    with pytest.raises(ModelError):
        load_model(trunc)


def test_checker_rejection_and_opset():
    m = conv_model()
    m.graph.node[0].input[1] = "nonexistent"
    with pytest.raises(ModelError, match="checker"):
        load_model(m)
    m = conv_model()
    m.opset_import[0].version = 5
    with pytest.raises(ModelError, match="opset 5"):
        load_model(m)


def test_save_is_atomic_and_refuses_input(tmp_path):
    p = tmp_path / "m.onnx"
    save_model(conv_model(), p)
    before = p.read_bytes()
    with pytest.raises(ModelError, match="overwrite the input"):
        save_model(conv_model(), p, source=p)
    assert p.read_bytes() == before
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_external_data_roundtrip(tmp_path):
    p = tmp_path / "ext.onnx"
    m = conv_model()
    save_model(m, p, external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    assert p.stat().st_size < 2000
    back = load_model(p)
    a = numpy_helper.to_array(next(t for t in back.graph.initializer if t.name == "w"))
    assert np.allclose(a, 0.1)


def test_load_from_bytes_and_proto_copy():
    m = conv_model()
    assert load_model(m.SerializeToString()).graph.node[0].op_type == "Conv"
    c = load_model(m)
    c.graph.node[0].name = "changed"
    assert m.graph.node[0].name != "changed"


def test_helper_model_with_ir_and_opset():
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert ModelSummary.of(load_model(m)).nodes == 1


def test_an_opset_onnxruntime_does_not_run_is_upgraded(caplog):
    m = onnx.parser.parse_model("""<ir_version: 3, opset_import: ["": 1]>
    g (bool[2] x) => (bool[2] y) { y = Not(x) }""")
    with caplog.at_level("WARNING", logger="onnxopt"):
        out = load_model(m)
    assert out.opset_import[0].version == 7
    assert any("opset 1 upgraded to 7" in r.message for r in caplog.records)
    assert m.opset_import[0].version == 1  # the caller's model is not modified
