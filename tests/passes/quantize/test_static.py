"""quantize-int8 as a pass: what it leaves alone, what it warns about, opset conversion, and
the digits ResNet end to end through the PassManager."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt.contract import PassContext
from onnxopt.data import Feeds, load_feeds
from onnxopt.passes.quantize import QuantizeInt8
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.verify import Budget
from tests.helpers import parse

from .support import (
    CONV_RELU_CONV,
    conv_relu_conv,
    cos,
    initializers,
    outputs,
    producer_of_input,
    spy_search_references,
)

RNG = np.random.default_rng(1)


@pytest.fixture
def conv_model() -> onnx.ModelProto:
    return conv_relu_conv(RNG)


def _feeds(n: int = 16, shape=(1, 2, 4, 4)) -> Feeds:
    return Feeds([{"x": RNG.uniform(-1.0, 2.0, shape).astype(np.float32)} for _ in range(n)])


def test_negative_constant_add_and_exclude_stay_float(conv_model: onnx.ModelProto) -> None:
    text = """
    <ir_version: 8, opset_import: ["": 17]>
    g (float[1,4] x) => (float[1,4] y) {
        y = Add (x, C)
    }
    """
    m = parse(text, dict(C=np.ones(4, np.float32)))
    res = QuantizeInt8().run_model(
        m, PassContext(feeds=Feeds([{"x": np.ones((1, 4), np.float32)}]))
    )
    assert not res.changed and any("constant operand" in n for n in res.notes)
    config = QuantizeConfig(exclude=["Conv"])
    res = QuantizeInt8(config).run_model(conv_model, PassContext(feeds=_feeds()))
    assert not res.changed


def test_too_few_samples_warns(conv_model: onnx.ModelProto) -> None:
    res = QuantizeInt8().run_model(conv_model, PassContext(feeds=_feeds(4)))
    assert any("only 4 calibration samples" in n for n in res.notes)


def test_old_opset_is_upgraded_then_quantized() -> None:
    """An opset-9 model (no QuantizeLinear before 10, no per-channel scales before 13) is
    converted by onnx's version converter, as onnxruntime's quantizer does, then quantized."""
    text = CONV_RELU_CONV.replace(
        '<ir_version: 8, opset_import: ["": 17]>', '<ir_version: 4, opset_import: ["": 9]>'
    )
    model = conv_relu_conv(RNG, text)
    feeds = _feeds()
    res, q = QuantizeInt8().apply(model, PassContext(feeds=feeds, allow_slower=True))
    assert res.changed and res.notes[0] == "opset 9 upgraded to 13 (onnx version converter)"
    assert model.opset_import[0].version == 9  # the input is left alone
    onnx.checker.check_model(q)
    assert q.opset_import[0].version == 13
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) >= 2
    conv = next(n.name for n in q.graph.node if n.op_type == "Conv")
    w_dq = producer_of_input(q, conv, 1)
    assert w_dq.op_type == "DequantizeLinear"
    assert initializers(q)[w_dq.input[1]].shape == (4,)  # per-channel weight scales
    assert cos(outputs(q, feeds), outputs(model, feeds)) > 0.999


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
    pm = manager(
        ["quantize-int8"],
        budget=Budget(min_cosine=0.99, max_accuracy_drop=0.5),
        allow_slower=True,  # correctness here; the speed gate has its own tests
    )
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


def test_sensitivity_reads_runs_spread_over_the_data_and_rough_ranges_the_smallest(
    conv_model: onnx.ModelProto, monkeypatch
) -> None:
    """Data saved in order holds one part of it in its leading runs: the per-layer
    sensitivity reads runs spread over all of it. The latency profile's rough ranges, which
    only build models to time, read the smallest runs (of equal ones, the first)."""
    from onnxopt.passes.quantize import static

    feeds = _feeds(32)
    seen: dict[str, list[int]] = {}

    def spy(name, real, runs_arg):
        def wrapped(*a, **k):
            runs = a[runs_arg]
            seen[name] = [next(i for i, r in enumerate(feeds.runs) if r is x) for x in runs]
            return real(*a, **k)

        return wrapped

    monkeypatch.setattr(
        static, "measure_sensitivity", spy("sensitivity", static.measure_sensitivity, 2)
    )
    monkeypatch.setattr(static, "collect_minmax", spy("rough", static.collect_minmax, 2))
    for latency_aware in (True, False):  # the profile's ranges; then int8, measured
        config = QuantizeConfig(sensitivity_runs=4, latency_aware=latency_aware)
        QuantizeInt8(config).run_model(conv_model, PassContext(feeds=feeds, budget=Budget()))
    assert seen["rough"] == [0, 1]
    assert seen["sensitivity"] == [0, 8, 16, 24]
    seen.clear()
    sized = conv_relu_conv(RNG, CONV_RELU_CONV.replace("4,4]", "h,w]"))
    feeds = _feeds(8, (1, 2, 8, 8))
    for i in (2, 5):  # the smallest, read in their order
        feeds.runs[i] = {"x": feeds.runs[i]["x"][:, :, :4, :4]}
    QuantizeInt8(QuantizeConfig(latency_aware=True)).run_model(
        sized, PassContext(feeds=feeds, budget=Budget())
    )
    assert seen["rough"] == [2, 5]


def test_the_search_scores_against_the_outputs_the_calibration_read(monkeypatch) -> None:
    """Without smoothing, the calibration runs the input model on every learning run: the
    search's reference is its outputs (equal to the Runner's, bit for bit) on the scored runs
    it ran alone, which scored runs of 1 MiB or more always are; runs it concatenated into one
    call are left for the search to run."""
    from onnxopt.runner import Runner
    from onnxopt.verify import Budget

    rng = np.random.default_rng(4)
    w1 = rng.normal(0, 0.3, (16, 8)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (8, 4)).astype(np.float32)
    got = spy_search_references(monkeypatch)
    cases = []
    # a fixed batch: each run alone; a dynamic one: 8 runs a call, but runs of 1 MiB alone
    for batch, rows in (("2", 2), ("N", 2), ("N", 16384)):
        m = parse(
            f"""
            <ir_version: 8, opset_import: ["": 17]>
            g (float[{batch},16] x) => (float[{batch},4] y) {{
                h = MatMul (x, W1)
                r = Relu (h)
                y = MatMul (r, W2)
            }}
            """,
            {"W1": w1, "W2": w2},
        )
        feeds = Feeds([{"x": rng.normal(0, 1, (rows, 16)).astype(np.float32)} for _ in range(10)])
        ctx = PassContext(feeds=feeds, allow_slower=True, budget=Budget(min_cosine=0.9))
        QuantizeInt8(QuantizeConfig(latency_aware=False)).run_model(m, ctx)
        cases.append((m, feeds))
    fixed, dynamic, large = got
    assert dynamic is not None and dynamic == [None] * 10
    for kept, case in ((fixed, cases[0]), (large, cases[2])):
        want = Runner().run(*case)
        assert kept is not None and len(kept) == len(want) == 10
        for a, b in zip(kept, want, strict=True):
            assert a.keys() == b.keys() == {"y"}
            np.testing.assert_array_equal(a["y"], b["y"])
