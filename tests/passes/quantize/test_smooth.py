"""SmoothQuant-style smoothing: exact in float, folded into LayerNorm, helps with outliers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.errors import OptionError
from onnxopt.passes.quantize import QuantizeInt8
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.passes.quantize.smooth import apply_smoothing, smoothing_scales
from tests.helpers import parse, run

from .support import spy_search_references

RNG = np.random.default_rng(7)
K, N = 16, 8

#: LayerNorm -> two MatMuls sharing its output (q/k-like), plus a residual reader
LN_RESIDUAL = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,4,16] x) => (float[1,4,8] y, float[1,4,16] r) {
    h = LayerNormalization <axis = -1> (x, G, Bt)
    a = MatMul (h, W1)
    b = MatMul (h, W2)
    y = Add (a, b)
    r = Add (h, x)
}
"""

#: LayerNorm read only by the MatMuls: the smoothing folds into gamma / beta
LN_ONLY = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,4,16] x) => (float[1,4,8] y) {
    h = LayerNormalization <axis = -1> (x, G, Bt)
    a = MatMul (h, W1)
    b = MatMul (h, W2)
    y = Add (a, b)
}
"""


def _model(text: str) -> onnx.ModelProto:
    inits = {
        "G": RNG.uniform(0.5, 1.5, K),
        "Bt": RNG.normal(0, 0.1, K),
        "W1": RNG.normal(0, 0.2, (K, N)),
        "W2": RNG.normal(0, 0.2, (K, N)),
    }
    return parse(text, {k: np.asarray(v, np.float32) for k, v in inits.items()})


def _runs(n: int = 16) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.normal(0, 1, (1, 4, K)).astype(np.float32)} for _ in range(n)]


def _xmax() -> dict[str, np.ndarray]:
    m = np.linspace(0.5, 4.0, K).astype(np.float32)
    m[3] = 60.0  # an outlier channel
    return {"h": m}


def test_scales_closed_form() -> None:
    s = smoothing_scales(np.array([4.0, 0.0, 9.0]), np.array([1.0, 2.0, 0.25]), 0.5)
    np.testing.assert_allclose(s, [2.0, 1.0, 6.0], rtol=1e-6)
    np.testing.assert_allclose(smoothing_scales(np.array([8.0]), np.array([2.0]), 1.0), [8.0])


def test_smoothing_with_residual_inserts_mul_and_is_exact() -> None:
    m = _model(LN_RESIDUAL)
    res = apply_smoothing(m, _xmax(), 0.5)
    assert (res.groups, res.matmuls, res.folded) == (1, 2, 0)
    ops = [n.op_type for n in res.model.graph.node]
    assert ops.count("Mul") == 1 and ops.count("MatMul") == 2
    # the residual Add still reads the LayerNorm output, the MatMuls read the smoothed tensor
    resid = next(n for n in res.model.graph.node if n.output[0] == "r")
    assert "h" in resid.input
    assert all(n.input[0] == "h_smoothed" for n in res.model.graph.node if n.op_type == "MatMul")
    runs = _runs(4)
    for a, b in zip([run(m, r) for r in runs], [run(res.model, r) for r in runs], strict=True):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)


def test_smoothing_folds_into_layernorm_exactly() -> None:
    m = _model(LN_ONLY)
    res = apply_smoothing(m, _xmax(), 0.5)
    assert (res.groups, res.folded) == (1, 1)
    assert [n.op_type for n in res.model.graph.node] == [
        "LayerNormalization",
        "MatMul",
        "MatMul",
        "Add",
    ]
    init = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    s = smoothing_scales(
        _xmax()["h"],
        np.maximum(
            np.abs(numpy_helper.to_array(m.graph.initializer[2])).max(1),
            np.abs(numpy_helper.to_array(m.graph.initializer[3])).max(1),
        ),
        0.5,
    )
    ln = res.model.graph.node[0]
    np.testing.assert_allclose(
        init[ln.input[1]] * s, numpy_helper.to_array(m.graph.initializer[0]), rtol=1e-6
    )
    runs = _runs(4)
    for a, b in zip([run(m, r) for r in runs], [run(res.model, r) for r in runs], strict=True):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)


def test_negative_activation_weight_is_not_smoothed() -> None:
    text = """
    <ir_version: 8, opset_import: ["": 17]>
    g (float[4,16] x, float[16,8] w) => (float[4,8] y) {
        y = MatMul (x, w)
    }
    """
    m = onnx.parser.parse_model(text)
    res = apply_smoothing(m, {"x": np.ones(K, np.float32)}, 0.5)
    assert res.groups == 0 and res.model is m


def test_quantize_int8_smooth_helps_outlier_channel() -> None:
    text = """
    <ir_version: 8, opset_import: ["": 17]>
    g (float[1,32,16] x) => (float[1,32,8] y) {
        y = MatMul (x, W1)
    }
    """
    m = onnx.parser.parse_model(text)
    m.graph.initializer.append(
        numpy_helper.from_array(RNG.normal(0, 0.2, (K, N)).astype(np.float32), "W1")
    )
    runs = []
    for _ in range(16):
        x = RNG.normal(0, 1, (1, 32, K)).astype(np.float32)
        x[..., 5] *= 80.0  # one outlier channel dominates the per-tensor range
        runs.append({"x": x})
    feeds = Feeds(runs)
    ref = np.concatenate([run(m, r)[0] for r in runs])

    def err(**opt: object) -> float:
        q = QuantizeInt8(QuantizeConfig(calibrator="minmax", fallback=False, **opt)).run_model(
            m, PassContext(feeds=feeds, allow_slower=True)
        )
        out = np.concatenate([run(q.model, r)[0] for r in runs])
        return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))

    plain, smoothed = err(), err(smooth=0.5)
    assert smoothed < 0.5 * plain, (plain, smoothed)
    with pytest.raises(OptionError, match="smooth"):
        QuantizeInt8(QuantizeConfig(smooth=2.0)).run_model(
            m, PassContext(feeds=feeds, allow_slower=True)
        )


def test_smoothing_statistics_read_runs_spread_over_the_data(monkeypatch) -> None:
    """``smooth_runs`` of 32 runs saved in order: the statistics read every eighth."""
    from onnxopt.passes.quantize import prepare

    m = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["": 17]>
        g (float[1,4,16] x) => (float[1,4,8] y) {
            y = MatMul (x, W1)
        }
        """
    )
    m.graph.initializer.append(
        numpy_helper.from_array(RNG.normal(0, 0.2, (K, N)).astype(np.float32), "W1")
    )
    feeds = Feeds([{"x": RNG.normal(0, 1, (1, 4, K)).astype(np.float32)} for _ in range(32)])
    seen: list[int] = []
    real = prepare.channel_stats

    def spy(probe, tensors, runs, **k):
        seen.extend(next(i for i, r in enumerate(feeds.runs) if r is x) for x in runs)
        return real(probe, tensors, runs, **k)

    monkeypatch.setattr(prepare, "channel_stats", spy)
    QuantizeInt8(QuantizeConfig(smooth=0.5, smooth_runs=4, fallback=False)).run_model(
        m, PassContext(feeds=feeds, allow_slower=True)
    )
    assert seen == [0, 8, 16, 24]


def test_a_smoothed_input_is_calibrated_to_its_full_range_and_the_others_are_clipped() -> None:
    """The smoothing strength is chosen for the input's min/max (SmoothQuant's scale): that
    input gets its full range (``smoothed_calibrator="minmax"``), while a tensor smoothing
    did not scale keeps the percentile (``linear_calibrator=None``; by default a linear
    layer's input, the Gemm's here, gets its full range too); ``smoothed_calibrator=None``
    clips both."""
    text = """
    <ir_version: 8, opset_import: ["": 17]>
    g (float[1,256,16] x) => (float[256,4] y) {
        h = MatMul (x, W1)
        f = Reshape (h, S)
        y = Gemm (f, W2)
    }
    """
    m = onnx.parser.parse_model(text)
    for name, value in (
        ("W1", RNG.normal(0, 0.2, (K, N))),
        ("W2", RNG.normal(0, 0.2, (N, 4))),
        ("S", np.array([256, N], np.int64)),
    ):
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    for t in m.graph.initializer:
        if t.name != "S":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    runs = []
    for i in range(16):
        x = RNG.normal(0, 1, (1, 256, K)).astype(np.float32)
        x[..., 5] *= 80.0  # the outlier channel smoothing moves onto the weights
        x[0, i, 2] = 30.0  # rare spikes, which the 99.99th percentile clips
        runs.append({"x": x})
    feeds = Feeds(runs)

    def scales(**opt: object) -> tuple[dict[str, float], np.ndarray]:
        q = QuantizeInt8(QuantizeConfig(smooth=0.5, fallback=False, **opt)).run_model(
            m, PassContext(feeds=feeds, allow_slower=True)
        )
        init = {t.name: numpy_helper.to_array(t) for t in q.model.graph.initializer}
        mul = next(n for n in q.model.graph.node if n.op_type == "Mul")
        got = {
            n.input[0]: float(init[n.input[1]])
            for n in q.model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] in (mul.output[0], "f")
        }
        return got, init[mul.input[1]]

    full, inv = scales(linear_calibrator=None)
    smoothed = next(k for k in full if k != "f")
    xs = np.concatenate([r["x"] for r in runs]) * inv  # the smoothed input, every value
    lo, hi = min(float(xs.min()), 0.0), max(float(xs.max()), 0.0)
    np.testing.assert_allclose(full[smoothed], (hi - lo) / 255, rtol=1e-3)
    w1 = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "W1"))
    f = np.concatenate([r["x"] for r in runs]) @ w1  # the Gemm's input, not smoothed
    assert full["f"] < 0.95 * (float(f.max()) - float(f.min())) / 255  # clipped
    clipped, _ = scales(smoothed_calibrator=None, linear_calibrator=None)
    assert clipped[smoothed] < 0.9 * full[smoothed], (clipped, full)
    assert clipped["f"] == pytest.approx(full["f"])  # the percentile both times
    linear, _ = scales()  # the defaults: the Gemm's input at its full range
    lo, hi = min(float(f.min()), 0.0), max(float(f.max()), 0.0)
    np.testing.assert_allclose(linear["f"], (hi - lo) / 255, rtol=1e-3)
    assert linear[smoothed] == pytest.approx(full[smoothed])


def test_smoothing_error_reads_the_float_products_it_is_given() -> None:
    """``choose_alphas`` computes each weight's float product once for its ten scales: the
    error is the same with the products given as computed inside."""
    from onnxopt.passes.quantize.smooth import smoothing_scales
    from onnxopt.passes.quantize.transformer import smoothing_error

    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 16)) * np.exp(rng.standard_normal(16))
    ws = [rng.standard_normal((16, 8)), rng.standard_normal((16, 4))]
    refs = [x @ w for w in ws]
    s = smoothing_scales(np.abs(x).max(0), np.max([np.abs(w).max(1) for w in ws], 0), 0.5)
    for scales in (None, s):
        assert smoothing_error(x, ws, scales, refs) == smoothing_error(x, ws, scales)
    assert smoothing_error(x, ws, s) < smoothing_error(x, ws, None)


def test_the_search_scores_against_the_outputs_the_smoothing_statistics_read(monkeypatch) -> None:
    """With smoothing on, its statistics run the input model on the runs the search scores on:
    the search's reference is those outputs (no second run), equal to the Runner's; with other
    run counts it runs the model itself."""
    from onnxopt.runner import Runner
    from onnxopt.verify import Budget

    m = _model(LN_RESIDUAL)
    feeds = Feeds(_runs(12))
    got = spy_search_references(monkeypatch)
    ctx = dict(feeds=feeds, allow_slower=True, budget=Budget(min_cosine=0.9))
    QuantizeInt8(QuantizeConfig(smooth=0.5, latency_aware=False)).run_model(m, PassContext(**ctx))
    want = Runner().run(m, feeds.subset(64))
    assert got[0] is not None and len(got[0]) == len(want) == 12
    for a, b in zip(got[0], want, strict=True):
        assert a.keys() == b.keys() == {"y", "r"}
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    QuantizeInt8(QuantizeConfig(smooth=0.5, latency_aware=False, smooth_runs=8)).run_model(
        m, PassContext(**ctx)
    )
    assert got[1] is None  # the statistics read 8 runs, the search scores 12: run it again


def test_only_the_matmuls_the_latency_placement_keeps_in_int8_are_smoothed(monkeypatch) -> None:
    """Two MatMuls on inputs of their own; the latency profile times "slow" slower in int8,
    so it stays float: the smoothing statistics read the input of "fast" alone, and only
    "fast" is smoothed (a float MatMul gains nothing from it). With every MatMul kept float
    by the profile, no statistics are read at all."""
    from onnxopt.passes.quantize import latency, prepare
    from onnxopt.timing import Race

    m = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["": 17]>
        g (float[1,4,16] x1, float[1,4,16] x2) => (float[1,4,8] y1, float[1,4,8] y2) {
            y1 = MatMul (x1, W1)
            y2 = MatMul (x2, W2)
        }
        """
    )
    for name in ("W1", "W2"):
        w = RNG.normal(0, 0.2, (K, N)).astype(np.float32)
        m.graph.initializer.append(numpy_helper.from_array(w, name))
    m.graph.node[0].name, m.graph.node[1].name = "fast", "slow"
    runs = []
    for _ in range(8):
        x1, x2 = (RNG.normal(0, 1, (1, 4, K)).astype(np.float32) for _ in range(2))
        x1[..., 3] *= 50.0
        runs.append({"x1": x1, "x2": x2})
    read: list[list[str]] = []
    real = prepare.channel_stats

    def spy(probe, tensors, runs, **k):
        read.append(list(tensors))
        return real(probe, tensors, runs, **k)

    def profile(int8_us: dict[str, float]):
        def measure_all(models, feed, att, **kw):
            fl = {"fast": 4000.0, "slow": 1000.0}
            out = [latency.Timing(fl, 5000.0, 6), latency.Timing(int8_us, 2000.0, 6)]
            return out[-len(models) :]

        return measure_all

    monkeypatch.setattr(prepare, "channel_stats", spy)
    monkeypatch.setattr(latency, "measure_all", profile({"fast": 500.0, "slow": 1500.0}))
    # the model with "slow" float is faster beyond noise: it stays float
    won = Race(a_ms=1.0, b_ms=0.9, rounds=10, b_wins=10, threads=2)
    monkeypatch.setattr(latency, "race", lambda *a, **k: won)
    config = QuantizeConfig(smooth=0.5, fallback=False)
    res = QuantizeInt8(config).run_model(m, PassContext(feeds=Feeds(runs)))
    assert res.sites == ["fast"] and read == [["x1"]]
    assert res.details["smoothing"]["matmuls"] == 1
    read.clear()
    monkeypatch.setattr(latency, "measure_all", profile({"fast": 4500.0, "slow": 1500.0}))
    res = QuantizeInt8(config).run_model(m, PassContext(feeds=Feeds(runs)))
    assert not res.changed and read == []


@pytest.mark.parametrize("residual", [True, False], ids=["mul", "folded"])
def test_the_calibration_reads_its_statistics_in_the_smoothing_runs(residual, monkeypatch) -> None:
    """The smoothing's pass over the data also streams the calibration's statistics: the
    data is run once, and the ranges are those two passes give (the smoothed input's, a
    Mul's output or the LayerNorm's with γ/s, derived from its per-channel extremes; the
    Gemm's input, not smoothed, binned)."""
    from onnxopt.passes.quantize import static

    text = (
        (LN_RESIDUAL if residual else LN_ONLY)
        .replace("float[1,4,8] y", "float[1,4,8] y, float[4,4] z")
        .replace(
            "y = Add (a, b)",
            "y = Add (a, b)\n    f = Reshape (y, S)\n    z = Gemm (f, W3)",
        )
    )
    gamma = RNG.uniform(0.5, 1.5, K)
    gamma[3] = 40.0  # an outlier channel after the LayerNorm
    inits = {
        "G": gamma,
        "Bt": RNG.normal(0, 0.1, K),
        "W1": RNG.normal(0, 0.2, (K, N)),
        "W2": RNG.normal(0, 0.2, (K, N)),
        "W3": RNG.normal(0, 0.3, (N, 4)),
    }
    inits = {k: np.asarray(v, np.float32) for k, v in inits.items()}
    m = parse(text, {**inits, "S": np.array([4, N], np.int64)})
    feeds = Feeds(_runs(12))
    calls: list[int] = []
    real = static.collect_stats

    def spy(*a, **k):
        calls.append(len(a[2]))
        return real(*a, **k)

    monkeypatch.setattr(static, "collect_stats", spy)

    def qparams() -> dict[str, tuple[float, int]]:
        q = QuantizeInt8(QuantizeConfig(smooth=0.5, fallback=False)).run_model(
            m, PassContext(feeds=feeds, allow_slower=True)
        )
        assert q.details["smoothing"]["groups"] == 1
        assert q.details["smoothing"]["folded"] == (0 if residual else 1)
        init = {t.name: numpy_helper.to_array(t) for t in q.model.graph.initializer}
        return {
            n.input[0]: (float(init[n.input[1]]), int(init[n.input[2]]))
            for n in q.model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in init
        }

    merged = qparams()
    assert calls == []  # no calibration pass of its own
    monkeypatch.setattr(static.QuantizeInt8, "_collect_with_smoothing", lambda *a: None)
    apart = qparams()
    assert calls == [12]
    assert merged.keys() == apart.keys() and len(merged) >= 2
    for t, (scale, zero) in apart.items():
        assert merged[t][1] == zero, t
        np.testing.assert_allclose(merged[t][0], scale, rtol=1e-5, err_msg=t)
