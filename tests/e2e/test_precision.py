"""End to end on real exports: half precision and 4-bit weights through the command line and
the PassManager, verified in onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxopt.cli.app import main
from onnxopt.data import Feeds
from onnxopt.passes import registry
from onnxopt.verify import Budget


def _encoder(tmp_path):
    """A one-layer torch transformer encoder (attention, LayerNorm, GELU FFN) on [1, 16, 64]."""
    from torch import nn

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True, activation="gelu")
    model = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    path = tmp_path / "enc.onnx"
    x = torch.randn(1, 16, 64)
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    rng = np.random.default_rng(0)
    data = tmp_path / "calib.npz"
    np.savez(data, x=rng.standard_normal((32, 1, 16, 64)).astype(np.float32))
    return path, data


def test_fp16_and_int4_on_an_exported_encoder(tmp_path) -> None:
    path, data = _encoder(tmp_path)
    model = onnx.load(str(path))
    rng = np.random.default_rng(1)
    feeds = Feeds([{"x": rng.standard_normal((1, 16, 64)).astype(np.float32)} for _ in range(8)])
    pm = registry.manager(["cleanup", "convert-fp16"], budget=Budget(min_cosine=0.999))
    out, rep = pm.run(model, feeds)
    (half,) = [p for p in rep.passes if p.name == "convert-fp16"]
    assert half.status == "kept", half.reason
    assert half.after["bytes"] < 0.55 * half.before["bytes"]
    assert rep.final_vs_original.cosine > 0.999
    # a clean export: every node converts (LayerNormalization keeps float32 statistics inside)
    assert half.details["converted_nodes"] == half.rewrites > 30
    assert half.details["float32_nodes"] == {}
    q4, report = tmp_path / "q4.onnx", tmp_path / "q4.json"
    args = ["quantize", str(path), "-o", str(q4), "--bits", "4", "--algo", "gptq"]
    code = main([*args, "--data", str(data), "--target", "onnxruntime", "--report", str(report)])
    assert code == 0
    passes = json.loads(report.read_text())["passes"]
    (int4,) = [p for p in passes if p["name"] == "quantize-int4"]
    assert int4["status"] == "kept" and len(int4["details"]["layers"]) == 4
    assert {n.op_type for n in onnx.load(str(q4)).graph.node} >= {"MatMulNBits"}


@pytest.mark.slow
def test_bert_small_fp16_and_int4_from_the_command_line(tmp_path) -> None:
    from onnxopt import zoo

    src = zoo.build("bert_small")
    out16, rep16 = tmp_path / "fp16.onnx", tmp_path / "fp16.json"
    passes = "cleanup,fusion,convert-fp16"
    assert (
        main(["optimize", str(src), "-o", str(out16), "--passes", passes, "--report", str(rep16)])
        == 0
    )
    rep = json.loads(rep16.read_text())
    (half,) = [p for p in rep["passes"] if p["name"] == "convert-fp16"]
    assert half["status"] == "kept"
    assert out16.stat().st_size < 0.52 * src.stat().st_size
    data = tmp_path / "calib.npz"
    feeds = [zoo.example_inputs("bert_small", seed=i) for i in range(16)]
    np.savez(data, **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})
    out4, rep4 = tmp_path / "q4.onnx", tmp_path / "q4.json"
    args = ["quantize", str(src), "-o", str(out4), "--bits", "4", "--algo", "gptq"]
    assert main([*args, "--data", str(data), "--target", "onnxruntime", "--report", str(rep4)]) == 0
    (int4,) = [p for p in json.loads(rep4.read_text())["passes"] if p["name"] == "quantize-int4"]
    assert int4["status"] == "kept", int4["reason"]
    assert out4.stat().st_size < 0.3 * src.stat().st_size
