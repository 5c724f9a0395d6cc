"""onnxopt.bench: latency percentiles, throughput, memory, noise intervals, input errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import helper

from onnxopt.bench import BenchResult, bench, feeds_for_batch, parse_batches, summarize
from onnxopt.cli.bench import rows
from onnxopt.errors import DataError, ModelError, OptionError


def _mlp(batch: int | str = "N") -> onnx.ModelProto:
    """y = relu(x·W + b), x float[batch, 16]."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor(
        "W",
        onnx.TensorProto.FLOAT,
        [16, 32],
        rng.standard_normal((16, 32)).astype(np.float32).ravel(),
    )
    b = helper.make_tensor("B", onnx.TensorProto.FLOAT, [32], np.zeros(32, np.float32))
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 32])],
        [w, b],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _reshape_model() -> onnx.ModelProto:
    """x float[6] reshaped to a shape computed from s int64[2] (s + 5): no synthesized value
    gives a shape of 6 elements."""
    return onnx.parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[6] x, int64[2] s) => (float[a,b] y) {
        five = Constant <value = int64[2] {5, 5}> ()
        t = Add(s, five)
        y = Reshape(x, t)
    }""")


def _int_model() -> onnx.ModelProto:
    """Gather from an embedding table: ids int64[1, 8]."""
    table = helper.make_tensor("E", onnx.TensorProto.FLOAT, [10, 4], np.ones(40, np.float32))
    g = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["y"])],
        "emb",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 4])],
        [table],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture()
def tiny(tmp_path):
    p = tmp_path / "tiny.onnx"
    onnx.save_model(_mlp(), str(p))
    return p


def _sane(r: BenchResult) -> None:
    assert r.runs >= 1
    assert 0 < r.p50 <= r.p90 <= r.p99
    assert r.mean > 0 and r.std >= 0
    assert r.median_ci[0] <= r.p50 <= r.median_ci[1]
    assert r.mean_ci[0] <= r.mean <= r.mean_ci[1]
    assert r.throughput == pytest.approx(r.batch / (r.mean / 1e3))
    assert r.session_ms > 0 and r.peak_rss_mb > 10 and r.session_rss_mb >= 0
    assert r.file_bytes > 2000  # 16x32 float weights


def test_bench_in_process_numbers_are_sane(tiny):
    res = bench([tiny], runs=30, warmup=2, isolate=False, threads=1)
    assert len(res) == 1
    r = res[0]
    _sane(r)
    assert r.runs == 30 and r.batch == 1 and r.synthesized
    assert r.file_bytes == tiny.stat().st_size
    assert r.inputs == "x float32[1x16]"
    assert "RSS delta" in r.memory_method


def test_bench_isolated_batches_and_seconds(tiny):
    res = bench([tiny], batch="1,4", seconds=0.2, warmup=1, threads=1)
    assert [r.batch for r in res] == [1, 4]
    assert res[1].inputs == "x float32[4x16]"
    for r in res:
        _sane(r)
        assert r.runs >= 3
        assert "subprocess" in r.memory_method


def test_bench_real_data_batches(tmp_path, tiny):
    x = np.random.default_rng(1).standard_normal((10, 16)).astype(np.float32)
    res = bench([tiny], data={"x": x}, batch=[4], runs=5, warmup=0, isolate=False)
    assert res[0].batch == 4 and not res[0].synthesized
    feeds = feeds_for_batch(_mlp(), 4, data={"x": x})
    assert len(feeds) == 2  # 10 samples -> two full batches of 4, the rest dropped
    with pytest.raises(DataError, match="fewer than --batch 16"):
        feeds_for_batch(_mlp(), 16, data={"x": x})


def test_modelproto_input_and_labels(tiny):
    res = bench([_mlp(), tiny], runs=5, warmup=0, isolate=False)
    assert res[0].path == "" and res[1].path == str(tiny)
    d = rows(res)
    assert d[0]["ratio"] == 1.0 and not d[0]["within_noise"]
    assert d[1]["ratio"] > 0


def test_summarize_and_noise():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["p50"] == 3.0 and s["mean"] == pytest.approx(22.0)
    assert s["median_ci"][0] <= 3.0 <= s["median_ci"][1]
    rng = np.random.default_rng(0)
    a = summarize(list(1.0 + 0.01 * rng.standard_normal(200)))
    b = summarize(list(1.001 + 0.01 * rng.standard_normal(200)))
    c = summarize(list(2.0 + 0.01 * rng.standard_normal(200)))
    mk = dict(
        model="m",
        path="",
        batch=1,
        provider="cpu",
        threads=0,
        optimization="all",
        warmup=0,
        runs=200,
        throughput=1.0,
        session_ms=1.0,
        peak_rss_mb=1.0,
        session_rss_mb=0.0,
        memory_method="",
        file_bytes=1,
        inputs="",
        synthesized=True,
    )
    ra, rb, rc = (BenchResult(**mk, **x) for x in (a, b, c))
    assert ra.within_noise(rb) and not ra.within_noise(rc)
    assert rc.ratio(ra) == pytest.approx(2.0, rel=0.02)


def test_option_errors(tiny):
    with pytest.raises(OptionError, match="--optimization"):
        bench([tiny], optimization="max")
    with pytest.raises(OptionError, match="--provider 'cuda' is not available"):
        bench([tiny], provider="cuda")
    with pytest.raises(OptionError, match="--batch"):
        parse_batches("1,x")
    with pytest.raises(OptionError, match="--runs"):
        bench([tiny], runs=0)


def test_model_and_input_errors(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        bench([tmp_path / "missing.onnx"])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not an ONNX model"):
        bench([bad], isolate=False)
    with pytest.raises(DataError, match="--int-range LOW,HIGH or --data"):
        bench([_reshape_model()], isolate=False)  # no synthesized shape input runs
    res = bench([_int_model()], runs=3, warmup=0, isolate=False)  # ids index a 10-row table
    assert res[0].inputs == "ids int64[1x8]"
    with pytest.raises(DataError, match="fixed batch dimension of 2"):
        bench([_mlp(batch=2)], batch="8", isolate=False)
    dyn = _mlp(batch="N")
    dyn.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "F"
    res = bench([dyn], runs=2, warmup=0, isolate=False)  # F: the MatMul weight pins 16
    assert res[0].inputs.endswith("[1x16]")
