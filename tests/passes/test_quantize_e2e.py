"""End to end: the digits ResNet quantized through the PassManager and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import typer
from typer.testing import CliRunner

from onnxopt.data import load_feeds
from onnxopt.verify import Budget

TINY = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,2,4,4] x) => (float[1,3,2,2] y) {
    c = Conv <pads = [1,1,1,1]> (x, W)
    r = Relu (c)
    y = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r)
}
"""


def _accuracy(path: str, x: np.ndarray, y: np.ndarray, name: str) -> float:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    pred = np.concatenate([s.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]).argmax(1)
    return float((pred == y).mean() * 100)


@pytest.mark.slow
def test_digits_resnet_int8_accuracy(tmp_path) -> None:
    from onnxopt import zoo
    from onnxopt.passes.registry import manager

    path = zoo.build("digits_resnet")
    d = zoo.digits_data()
    model = onnx.load(str(path))
    name = model.graph.input[0].name
    calib = load_feeds({name: d["X_train"][:256], "labels": d["y_train"][:256]}, model)
    pm = manager(["quantize-int8"], budget=Budget(min_cosine=0.99, max_accuracy_drop=0.5))
    out, report = pm.run(model, calib)
    assert report.passes[-1].status == "kept"
    q = tmp_path / "q.onnx"
    onnx.save(out, str(q))
    fp32 = _accuracy(str(path), d["X_test"], d["y_test"], name)
    int8 = _accuracy(str(q), d["X_test"], d["y_test"], name)
    assert fp32 >= 97.0 and int8 >= fp32 - 0.5
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "QLinearConv" in ops and "QGemm" in ops and "QLinearAdd" in ops
    assert not {"Conv", "Gemm", "Add", "DequantizeLinear"} & set(ops)


def _tiny(tmp_path):
    m = onnx.parser.parse_model(TINY)
    w = np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(np.float32)
    m.graph.initializer.append(onnx.numpy_helper.from_array(w, "W"))
    p = tmp_path / "tiny.onnx"
    onnx.save(m, str(p))
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((32, 1, 2, 4, 4)).astype(np.float32))
    return p, data


def test_cli_quantize_with_typer_app(tmp_path) -> None:
    from onnxopt.cli.quantize import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer in multi-command mode
        pass

    p, data = _tiny(tmp_path)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(app, ["quantize", str(p), "-o", str(out), "--data", str(data),
                                 "--calibrator", "entropy", "--passes", ""])
    assert r.exit_code == 0, r.output
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "QuantizeLinear" in ops and "Relu" not in ops


def test_cli_errors_are_one_line(tmp_path) -> None:
    p, data = _tiny(tmp_path)
    base = [sys.executable, "-m", "onnxopt", "quantize", str(p), "-o", str(tmp_path / "q.onnx")]
    r = subprocess.run([*base, "--data", str(data), "--calibrator", "median"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--calibrator 'median'" in (r.stdout + r.stderr)
    assert "Traceback" not in r.stderr
    r = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "needs calibration data" in (r.stdout + r.stderr)
    bad = tmp_path / "bad.npz"
    np.savez(bad, nope=np.zeros((4, 1, 2, 4, 4), np.float32))
    r = subprocess.run([*base, "--data", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "input names do not match" in (r.stdout + r.stderr)


def test_cli_dynamic_and_static_subprocess(tmp_path) -> None:
    p, data = _tiny(tmp_path)
    out = tmp_path / "q.onnx"
    r = subprocess.run([sys.executable, "-m", "onnxopt", "quantize", str(p), "-o", str(out),
                        "--data", str(data), "--activations", "int8-sym", "--per-tensor"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "quantize-int8" in r.stdout and "kept" in r.stdout


def test_cli_smooth_option(tmp_path) -> None:
    from onnxopt.cli.quantize import quantize_config
    from onnxopt.errors import OptionError

    config = quantize_config("percentile", 99.99, False, "uint8", None, smooth=0.5)
    assert config.smooth == 0.5
    with pytest.raises(OptionError, match="--smooth"):
        quantize_config("percentile", 99.99, False, "uint8", None, smooth=1.5)
