"""Weights that stay where they are: mapped loading (embedded and external data), views not
copies, spilling, materializing, and the streaming save beside the output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt import weights
from onnxopt.errors import ModelError
from onnxopt.model import load_model, save_model
from tests.helpers import run

H = 64


@pytest.fixture
def small_maps(monkeypatch):
    """Map models and tensors from a few KB on (the defaults are 64 MB / 64 KB)."""
    monkeypatch.setattr(weights, "MAP_MIN_MODEL_BYTES", 10_000)
    monkeypatch.setattr(weights, "MAP_MIN_TENSOR_BYTES", 4096)


def chain(layers: int = 3, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((H, H), np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array(rng.standard_normal(H, np.float32), f"b{i}"))
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Identity", [f"a{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    g = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, H])],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [2, H])],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def digest(*paths: Path) -> str:
    h = hashlib.sha1()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((2, H)).astype(np.float32)}


@pytest.mark.parametrize("external", [False, True])
def test_large_model_is_mapped_not_copied(tmp_path, small_maps, external) -> None:
    ref = {t.name: numpy_helper.to_array(t) for t in chain().graph.initializer}
    src = tmp_path / "in.onnx"
    onnx.save_model(chain(), src, save_as_external_data=external, location="in.onnx.data")
    loaded = load_model(src)
    mapped = [t for t in loaded.graph.initializer if weights.is_mapped(t)]
    assert [t.name for t in mapped] == ["w0", "w1", "w2"]  # the biases are below 4 KB
    for t in mapped:
        a = weights.array(t)
        assert not a.flags.writeable and weights.find(a) is not None  # a view of the mapping
        np.testing.assert_array_equal(a, ref[t.name])
    assert loaded.ByteSize() < 10_000  # a skeleton
    full = weights.materialize(loaded)
    assert not weights.is_mapped_model(full)
    np.testing.assert_array_equal(run(full, feeds())[0], run(chain(), feeds())[0])


def test_optimize_and_save_beside_the_output_input_unchanged(tmp_path, small_maps) -> None:
    from onnxopt.passes.registry import manager

    src = tmp_path / "in.onnx"
    onnx.save_model(chain(), src, save_as_external_data=True, location="in.onnx.data")
    before = digest(src, tmp_path / "in.onnx.data")
    out_model, report = manager(["cleanup"]).run(load_model(src))
    assert weights.is_mapped_model(out_model)
    assert all(p.peak_rss_mb and p.peak_rss_mb > 0 for p in report.passes)
    out = tmp_path / "sub" / "out.onnx"
    save_model(out_model, out, external_data=True, source=src)
    assert (tmp_path / "sub" / "out.onnx.data").exists()
    assert digest(src, tmp_path / "in.onnx.data") == before
    written = onnx.load(str(out))  # onnx resolves the data beside it
    offsets = [
        int(e.value)
        for t in onnx.load(str(out), load_external_data=False).graph.initializer
        for e in t.external_data
        if e.key == "offset"
    ]
    assert offsets and all(o % 4096 == 0 for o in offsets)
    np.testing.assert_allclose(run(written, feeds())[0], run(chain(), feeds())[0], rtol=1e-6)
    # embedded: the same model in one file
    save_model(out_model, tmp_path / "one.onnx", external_data=False)
    one = onnx.load(str(tmp_path / "one.onnx"))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in one.graph.initializer)
    np.testing.assert_array_equal(run(one, feeds())[0], run(written, feeds())[0])


def test_never_replaces_the_inputs_data_file(tmp_path, small_maps) -> None:
    src = tmp_path / "a.onnx"
    onnx.save_model(chain(), src, save_as_external_data=True, location="b.onnx.data")
    m = load_model(src)
    with pytest.raises(ModelError, match="input's external data"):
        save_model(m, tmp_path / "b.onnx", external_data=True, source=src)


def test_spilled_weights_are_mapped_once() -> None:
    a = np.arange(10_000, dtype=np.float32).reshape(100, 100)
    s = weights.spill("big", a)
    v = weights.array(s)
    np.testing.assert_array_equal(v, a)
    again = weights.stub_for("same", v)  # a view of a mapping exports as a stub, no copy
    assert again is not None and weights.location(again) == weights.location(s)
    assert weights.stub_for("fresh", a.copy()) is None


def test_missing_or_short_external_data_is_one_line(tmp_path, small_maps) -> None:
    src = tmp_path / "in.onnx"
    onnx.save_model(chain(), src, save_as_external_data=True, location="in.onnx.data")
    data = tmp_path / "in.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ModelError, match="cannot load external data"):
        load_model(src)
    data.unlink()
    with pytest.raises(ModelError, match="no such file"):
        load_model(src)
