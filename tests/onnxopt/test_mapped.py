"""Models opened with their weights mapped, not read: the same model as onnx.load, weights fed
to onnxruntime as inputs, pages dropped on release, one-line errors for broken files."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxopt.errors import ModelError
from onnxopt.mapped import MAPPED_MIN_ELEMENTS, mapped_from_proto, open_mapped
from onnxopt.model import save_model
from tests.helpers import random_feeds
from tests.onnxopt.planted import chain


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so).run(None, feeds)


def big_model() -> onnx.ModelProto:
    return chain(blocks=3, d=64)  # 64x64 weights: above the mapping threshold


@pytest.mark.parametrize("external", [False, True])
def test_mapped_model_equals_the_loaded_one_and_runs(tmp_path, external):
    m = big_model()
    full = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    feeds = random_feeds(m)
    ref = _ort(m, feeds)
    path = tmp_path / "m.onnx"
    if external:  # onnx.save moves m's weights out to m.data
        onnx.save(m, path, save_as_external_data=True, location="m.data", size_threshold=0)
    else:
        save_model(m, path)
    mm = open_mapped(path)
    assert set(mm.weights) == {k for k, v in full.items() if v.size > MAPPED_MIN_ELEMENTS}
    for k, v in mm.weights.items():
        assert not v.flags.writeable and np.array_equal(v, full[k])
    assert [n.name for n in mm.proto.graph.node] == [n.name for n in m.graph.node]
    got = _ort(mm.session_model(), mm.feeds(feeds))
    np.testing.assert_array_equal(ref[0], got[0])
    mm.release()  # the arrays stay valid: pages come back from the page cache
    np.testing.assert_array_equal(_ort(mm.session_model(), mm.feeds(feeds))[0], ref[0])
    mm.close()


def test_in_memory_model_has_the_same_interface():
    m = big_model()
    mm = mapped_from_proto(m)
    feeds = random_feeds(m)
    np.testing.assert_array_equal(_ort(m, feeds)[0], _ort(mm.session_model(), mm.feeds(feeds))[0])


@pytest.mark.parametrize("content", [b"", b"not a model at all \xff\xff", b"\x3a\xff\xff\xff"])
def test_broken_files_are_one_line_model_errors(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError) as e:
        open_mapped(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelError, match="cannot read"):
        open_mapped(tmp_path / "missing.onnx")
