"""The protobuf wire format walk: skeletons of embedded models, streaming writes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxopt import weights, wire
from tests.onnxopt.test_weights import chain


def test_skeleton_points_into_the_file_itself(tmp_path) -> None:
    m = chain()
    path = tmp_path / "m.onnx"
    onnx.save_model(m, path)
    sk = wire.load_skeleton(str(path), min_bytes=4096)
    assert len(sk.graph.node) == len(m.graph.node)
    for t, ref in zip(sk.graph.initializer, m.graph.initializer, strict=True):
        assert t.name == ref.name and list(t.dims) == list(ref.dims)
        if weights.is_mapped(t):
            assert weights.location(t)[0] == str(path.resolve())
        np.testing.assert_array_equal(weights.array(t), numpy_helper.to_array(ref))


def test_embedded_write_is_the_same_model(tmp_path) -> None:
    m = chain()
    path = tmp_path / "m.onnx"
    onnx.save_model(m, path)
    sk = wire.load_skeleton(str(path), min_bytes=4096)
    wire.write_embedded(sk, str(tmp_path / "copy.onnx"))
    back = onnx.load(str(tmp_path / "copy.onnx"))
    onnx.checker.check_model(back)
    got = {t.name: numpy_helper.to_array(t) for t in back.graph.initializer}
    for t in m.graph.initializer:
        np.testing.assert_array_equal(got[t.name], numpy_helper.to_array(t))


def test_truncated_file_is_a_wire_error(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(chain(), path)
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(wire.WireError):
        wire.load_skeleton(str(path), min_bytes=4096)


def test_varint_round_trip() -> None:
    for v in (0, 1, 127, 128, 300, 2**31, 2**40):
        enc = wire.encode_varint(v)
        assert wire._varint(enc, 0, len(enc)) == (v, len(enc))
