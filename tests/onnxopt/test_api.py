"""The public Python API on the bundled example."""

from __future__ import annotations

import sys

import numpy as np

import onnxopt
from onnxopt.examples import FOLDER as EXAMPLES
from onnxopt.verify import Budget

MODEL = EXAMPLES / "digits_cnn.onnx"


def test_import_is_light():
    import subprocess

    code = "import onnxopt, sys; onnxopt.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_optimize_and_quantize_api():
    data = np.load(EXAMPLES / "digits_test.npz")
    feeds = {"image": data["image"][:160].reshape(4, 40, 1, 8, 8)}
    model, report = onnxopt.optimize(MODEL, data=feeds)
    assert any(p.status == "kept" for p in report.passes)
    calib = {"image": np.load(EXAMPLES / "digits_calib.npz")["image"].reshape(8, 32, 1, 8, 8)}
    q, rep = onnxopt.quantize(model, calib, Budget(min_cosine=0.98), allow_slower=True)
    assert rep.passes[-1].name == "quantize-int8" and rep.passes[-1].status == "kept"
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)


def test_family_alias_quantize_is_static_int8():
    from onnxopt.passes import registry

    assert registry.expand(["quantize"]) == ["quantize-int8"]


def test_quantize_api_with_4_bits():
    import pytest

    from onnxopt.errors import OptionError

    calib = {"image": np.load(EXAMPLES / "digits_calib.npz")["image"].reshape(8, 32, 1, 8, 8)}
    q, rep = onnxopt.quantize(MODEL, calib, bits=4, target="onnxruntime", algo="hqq")
    (p,) = rep.passes
    assert p.name == "quantize-int4" and p.details["algo"] == "hqq"
    assert p.status == "kept" and "MatMulNBits" in {n.op_type for n in q.graph.node}
    with pytest.raises(OptionError, match="add --target onnxruntime"):
        onnxopt.quantize(MODEL, calib, bits=4)
    with pytest.raises(OptionError, match="bits must be 8"):
        onnxopt.quantize(MODEL, calib, bits=2)
