"""``onnxopt optimize`` on inputs a user can get wrong (issue #20): each is one line on stderr
and exit code 2, no traceback, and no output file. Run in-process through ``main`` (the
subprocess path is covered by ``test_app.py``)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt.cli.app import main
from onnxopt.examples import FOLDER as EXAMPLES

EXAMPLE = EXAMPLES / "digits_cnn.onnx"


def optimize(capsys, src, out, *extra) -> str:
    """Run ``onnxopt optimize``, assert a one-line exit-2 error and no output; the error."""
    capsys.readouterr()
    rc = main(["optimize", str(src), "-o", str(out), *map(str, extra)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err and len(err.splitlines()) <= 2, err  # rich may wrap once
    assert err.startswith("error:") and not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return err.replace("\n", " ")


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _add_w(w: onnx.TensorProto) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], [x], [y], [w])


def _write(path, model: onnx.ModelProto):
    path.write_bytes(model.SerializeToString())
    return path


def test_truncated_files_at_every_point(tmp_path, capsys):
    data = EXAMPLE.read_bytes()
    src, out = tmp_path / "t.onnx", tmp_path / "o.onnx"
    for cut in range(1, len(data), len(data) // 12):
        src.write_bytes(data[:cut])
        err = optimize(capsys, src, out)
        assert "t.onnx" in err or "onnxruntime" in err


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "file is empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not an ONNX model"),
        (b"name,value\n" * 50, "not an ONNX model"),
    ],
    ids=["empty", "garbage", "text"],
)
def test_garbage_files(tmp_path, capsys, content, words):
    src = tmp_path / "g.onnx"
    src.write_bytes(content)
    assert words in optimize(capsys, src, tmp_path / "o.onnx")


def _missing(which: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y])
    if which == "graph":
        m.ClearField("graph")
    elif which == "ir_version":
        m.ir_version = 0
    elif which == "opset_import":
        del m.opset_import[:]
    elif which == "op_type":
        m.graph.node[0].op_type = ""
    elif which == "input type":
        m.graph.input[0].ClearField("type")
    elif which == "initializer dtype":
        t = numpy_helper.from_array(np.ones(4, np.float32), "w")
        t.data_type = 0
        m.graph.initializer.append(t)
    elif which == "initializer name":
        m.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), ""))
    return m


@pytest.mark.parametrize(
    "which",
    [
        "graph",
        "ir_version",
        "opset_import",
        "op_type",
        "input type",
        "initializer dtype",
        "initializer name",
    ],
)
def test_protobuf_with_a_missing_field(tmp_path, capsys, which):
    src = _write(tmp_path / "m.onnx", _missing(which))
    optimize(capsys, src, tmp_path / "o.onnx")


def test_declared_output_shape_that_the_model_contradicts(tmp_path, capsys):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])
    src = _write(tmp_path / "m.onnx", _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y]))
    err = optimize(capsys, src, tmp_path / "o.onnx")
    assert "'y' is declared [1, 8] but the model computes [1, 4]" in err
    # known only at run time: the output's shape comes from an input's values
    s = helper.make_tensor_value_info("s", onnx.TensorProto.INT64, [2])
    m = _model([helper.make_node("Reshape", ["x", "s"], ["y"])], [x, s], [y])
    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((3, 1, 4), np.float32), s=np.tile([[1, 4]], (3, 1)))
    src = _write(tmp_path / "r.onnx", m)
    assert "declared [1, 8]" in optimize(capsys, src, tmp_path / "o.onnx", "--data", data)


@pytest.mark.parametrize(
    "field, words",
    [
        ("raw_short", "too small"),
        ("raw_long", "has 24 bytes for shape [4]"),
        ("float_short", "too small"),
        ("float_long", "has 6 values for shape [4]"),
    ],
)
def test_initializer_size_that_does_not_match_its_shape(tmp_path, capsys, field, words):
    if field.startswith("raw"):
        w = numpy_helper.from_array(np.ones(4, np.float32), "w")
        w.raw_data = w.raw_data[:12] if field == "raw_short" else w.raw_data + bytes(8)
    else:
        w = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[4])
        w.float_data.extend([1.0] * (2 if field == "float_short" else 6))
    src = _write(tmp_path / "m.onnx", _add_w(w))
    assert words in optimize(capsys, src, tmp_path / "o.onnx")


def _external(location: str) -> onnx.ModelProto:
    w = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[4])
    w.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        w.external_data.add(key=k, value=v)
    return _add_w(w)


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "ABS", "link.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, capsys, location):
    folder = tmp_path / "model"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    os.symlink(secret, folder / "link.bin")
    location = str(secret) if location == "ABS" else location
    src = _write(folder / "m.onnx", _external(location))
    err = optimize(capsys, src, folder / "o.onnx")
    assert "refusing external data" in err and "inside the model's folder" in err


def test_npz_holding_object_arrays_is_refused_never_unpickled(tmp_path, capsys):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    src = _write(tmp_path / "m.onnx", _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y]))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.array([{"__reduce__": "os.system"}, None], dtype=object))
    err = optimize(capsys, src, tmp_path / "o.onnx", "--data", data)
    assert "object arrays" in err and "never unpickles" in err
    folder = tmp_path / "npys"
    folder.mkdir()
    np.save(folder / "x.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    assert "never unpickles" in optimize(capsys, src, tmp_path / "o.onnx", "--data", folder)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("flag", ["--calib-data", "--data"])
def test_non_finite_data_is_refused(tmp_path, capsys, bad, flag):
    data = tmp_path / "d.npz"
    x = np.load(EXAMPLES / "digits_calib.npz")
    arrays = {k: x[k].copy() for k in x.files}
    arrays["image"][1, 0, 3, 3] = bad
    np.savez(data, **arrays)
    err = optimize(capsys, EXAMPLE, tmp_path / "o.onnx", flag, data, "--batch", "8")
    assert "NaN or Inf" in err


@pytest.mark.parametrize(
    "value, words", [(4, "input 'x' has a fixed batch of 1"), (0, "must be at least 1")]
)
def test_latency_batch_the_model_cannot_take(tmp_path, capsys, value, words):
    src = _write(tmp_path / "m.onnx", _add_w(numpy_helper.from_array(np.ones(4, np.float32), "w")))
    err = optimize(capsys, src, tmp_path / "o.onnx", "--latency-batch", value)
    assert words in err, err
