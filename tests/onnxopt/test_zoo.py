"""The model zoo builds valid models that onnxruntime runs (digits here; 224 and BERT slow)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt import zoo


def _session(path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def test_digits_data_split():
    d = zoo.digits_data()
    assert d["X_train"].shape == (1347, 1, 8, 8) and d["X_test"].shape == (450, 1, 8, 8)
    assert d["X_train"].dtype == np.float32 and d["y_test"].dtype == np.int64
    assert 0.0 <= d["X_test"].min() and d["X_test"].max() <= 1.0
    assert set(np.unique(d["y_test"])) == set(range(10))
    assert np.array_equal(zoo.digits_data()["y_test"], d["y_test"])  # fixed split


def test_digits_npz(tmp_path):
    p = zoo.digits_npz(tmp_path / "d.npz")
    with np.load(p) as z:
        assert sorted(z.files) == ["input", "labels"]
        assert z["input"].shape == (450, 1, 8, 8) and z["labels"].shape == (450,)
    with pytest.raises(zoo.ZooError, match="split"):
        zoo.digits_npz(tmp_path / "x.npz", split="val")


@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
def test_digits_resnet_accuracy_in_onnxruntime(exporter):
    path = zoo.build("digits_resnet", exporter)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert m.opset_import[0].version == zoo.OPSET[exporter]
    assert {n.op_type for n in m.graph.node} >= {"Conv", "Add", "Relu"}
    d = zoo.digits_data()
    (logits,) = _session(path).run(None, {"input": d["X_test"]})  # dynamic batch: all 450
    acc = float((logits.argmax(1) == d["y_test"]).mean())
    assert acc >= 0.97


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn_small", "digits_cnn_wide"])
@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
def test_other_digits_models(name, exporter):
    path = zoo.build(name, exporter)
    d = zoo.digits_data()
    (logits,) = _session(path).run(None, {"input": d["X_test"][:64]})
    assert logits.shape == (64, 10)
    assert float((logits.argmax(1) == d["y_test"][:64]).mean()) >= 0.85


def test_torch_model_is_cached_and_matches_onnx():
    torch = pytest.importorskip("torch")
    m = zoo.torch_model("digits_resnet")
    assert not m.training
    x = zoo.digits_data()["X_test"][:8]
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    (got,) = _session(zoo.build("digits_resnet")).run(None, {"input": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_errors_name_model_and_exporter():
    with pytest.raises(zoo.ZooError, match="unknown zoo model 'resnet50'"):
        zoo.build("resnet50")
    with pytest.raises(zoo.ZooError, match="unknown exporter 'tf'"):
        zoo.build("digits_mlp", "tf")


def test_export_failure_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXOPT_ZOO_DIR", str(tmp_path))
    import torch

    def broken(*a, **k):
        raise RuntimeError("unsupported operator aten::foo\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", broken)
    monkeypatch.setattr(zoo, "torch_model", lambda name: torch.nn.Identity())
    with pytest.raises(
        zoo.ZooError,
        match=r"export of digits_mlp with the dynamo exporter "
        r"failed: RuntimeError: unsupported operator aten::foo$",
    ):
        zoo.build("digits_mlp", "dynamo")
    assert not list(tmp_path.glob("*.onnx"))  # nothing half-written


@pytest.mark.slow
@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "bert_small", "bert_base"])
def test_large_models_run_in_onnxruntime(name, exporter):
    path = zoo.build(name, exporter)
    feeds = zoo.example_inputs(name)
    outs = _session(path).run(None, feeds)
    if name.startswith("bert"):
        hidden = 768 if name == "bert_base" else 256
        assert outs[0].shape == (1, zoo.BERT_SEQ, hidden) and outs[1].shape == (1, hidden)
        assert {i.name for i in onnx.load(str(path), load_external_data=False).graph.input} == {
            "input_ids",
            "attention_mask",
        }
    else:
        assert outs[0].shape == (1, 1000)
    assert all(np.isfinite(o).all() for o in outs)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", zoo.ALL_EXPORTERS)
def test_digits_transformer(exporter):
    """A trained encoder over the 8 rows; every exporter gives the same accuracy in onnxruntime."""
    path = zoo.build("digits_transformer", exporter)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "MatMul" in ops and "Softmax" in ops
    d = zoo.digits_data()
    (logits,) = _session(path).run(None, {"input": d["X_test"]})
    assert float((logits.argmax(1) == d["y_test"]).mean()) >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_resnet", "mobilenetv2"])
def test_raw_dynamo_export(name):
    """optimize=False keeps the exporter's artefacts (unfolded BatchNorm, more nodes) and the
    same numbers as the optimized export."""
    raw, clean = zoo.build(name, zoo.RAW), zoo.build(name, "dynamo")
    raw_ops = [n.op_type for n in onnx.load(str(raw)).graph.node]
    clean_ops = [n.op_type for n in onnx.load(str(clean)).graph.node]
    assert "BatchNormalization" in raw_ops and "BatchNormalization" not in clean_ops
    assert len(raw_ops) > len(clean_ops)
    feeds = zoo.example_inputs(name, batch=2)
    (a,) = _session(raw).run(None, feeds)
    (b,) = _session(clean).run(None, feeds)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
