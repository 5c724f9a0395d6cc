"""A model over protobuf's 2 GB limit, generated in the test's folder: loaded mapped,
optimized, saved with its external data beside the output; the input's files untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxopt import weights
from onnxopt.model import load_model, save_model
from onnxopt.passes.registry import manager

ROWS, DIM = 200_000, 1024  # 819 MB a table, three tables: 2.46 GB


def write_tables(path: Path) -> Path:
    data = path.with_name(path.name + ".data")
    inits = []
    rng = np.random.default_rng(0)
    with open(data, "wb") as f:
        for k in range(3):
            offset = f.tell()
            for _ in range(ROWS // 20_000):  # in chunks: never the whole table in memory
                f.write(rng.standard_normal((20_000, DIM), np.float32).tobytes())
            t = TensorProto(name=f"table{k}", data_type=TensorProto.FLOAT, dims=[ROWS, DIM])
            t.data_location = TensorProto.EXTERNAL
            for key, v in (
                ("location", data.name),
                ("offset", str(offset)),
                ("length", str(ROWS * DIM * 4)),
            ):
                e = t.external_data.add()
                e.key, e.value = key, v
            inits.append(t)
    nodes = [helper.make_node("Gather", [f"table{k}", "ids"], [f"g{k}"]) for k in range(3)]
    nodes += [
        helper.make_node("Identity", ["g0"], ["i0"]),
        helper.make_node("Add", ["i0", "g1"], ["s"]),
        helper.make_node("Add", ["s", "g2"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "tables",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, DIM])],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path.write_bytes(m.SerializeToString())
    return path


def sha1(*paths: Path) -> str:
    h = hashlib.sha1()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(64 << 20):
                h.update(chunk)
    return h.hexdigest()


@pytest.mark.slow
def test_over_2gb_round_trip(tmp_path) -> None:
    import onnxruntime as ort

    (tmp_path / "in").mkdir()
    src = write_tables(tmp_path / "in" / "tables.onnx")
    data = src.with_name("tables.onnx.data")
    before = sha1(src, data)
    model = load_model(src)
    assert weights.is_mapped_model(model) and model.ByteSize() < 100_000
    out, report = manager(["cleanup", "fusion"]).run(model)
    assert "remove-identity" in [p.name for p in report.passes if p.kept]
    assert all(p.status != "error" for p in report.passes)
    dst = tmp_path / "out" / "tables.opt.onnx"
    save_model(out, dst, source=src)  # above ~1.8 GB: external data, chosen by size
    assert (dst.parent / "tables.opt.onnx.data").stat().st_size >= 3 * ROWS * DIM * 4
    assert sha1(src, data) == before
    ids = {"ids": np.array([0, 7, 199_999, 12345], np.int64)}
    a = ort.InferenceSession(str(src)).run(None, ids)[0]
    b = ort.InferenceSession(str(dst)).run(None, ids)[0]
    np.testing.assert_array_equal(a, b)
