"""Rounding with error feedback (GPTQ): lower output error than rounding to nearest, the same
result every time, groups batched as they would go one by one; the pass applies it after its
search to the layers it keeps int8; AdaRound falls back to it where its cost cap bites."""

from __future__ import annotations

import dataclasses

import numpy as np

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes.quantize import QuantizeInt8
from onnxopt.passes.quantize.adaround import learn_rounding
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.passes.quantize.gptq import gptq
from onnxopt.passes.quantize.qdq import quantize_weight, weight_params
from tests.helpers import parse
from tests.passes.quantize.support import initializers

RNG = np.random.default_rng(5)

LAYER = """
<ir_version: 8, opset_import: ["": 17]>
g (float[32,24] x) => (float[32,8] y) {
    y = MatMul (x, W)
}
"""


def _inputs(n: int = 24) -> list[np.ndarray]:
    """Correlated inputs (4 directions, a little noise, a mean): rounding each weight on its own
    is far from the best rounding of the layer."""
    mix = RNG.standard_normal((4, 24))
    return [
        (RNG.standard_normal((32, 4)) @ mix + 0.05 * RNG.standard_normal((32, 24)) + 0.5).astype(
            np.float32
        )
        for _ in range(n)
    ]


def _mse(x: np.ndarray, w: np.ndarray, q: np.ndarray, scale: np.ndarray) -> float:
    return float(np.mean((x @ (q * scale) - x @ w) ** 2))


def test_lower_output_error_than_nearest_and_deterministic() -> None:
    w = (RNG.standard_normal((24, 8)) * 0.2).astype(np.float32)
    x = np.concatenate(_inputs()).astype(np.float64)
    scale = weight_params(w, 1)
    gram = (x.T @ x / len(x))[None]
    q = gptq(w.T[None], scale[None], gram, qmax=127)[0].T
    near = quantize_weight(w, scale, 1)
    assert q.shape == w.shape and np.abs(q).max() <= 127
    assert _mse(x, w, q, scale) < 0.5 * _mse(x, w, near, scale)
    np.testing.assert_array_equal(gptq(w.T[None], scale[None], gram, qmax=127)[0].T, q)


def test_groups_go_together_as_they_would_one_by_one() -> None:
    """A depthwise layer's groups are batched: the same integers as one group at a time; an
    input never seen (a zero row and column of its Gram matrix) rounds to nearest."""
    w = RNG.standard_normal((6, 2, 9))
    scale = np.abs(w).max(axis=2) / 127
    rows = RNG.standard_normal((6, 50, 9))
    rows[2, :, 4] = 0.0  # group 2 never sees input 4
    gram = np.einsum("gmk,gml->gkl", rows, rows) / 50
    together = gptq(w, scale, gram, qmax=127)
    one_by_one = np.concatenate(
        [gptq(w[j : j + 1], scale[j : j + 1], gram[j : j + 1], qmax=127) for j in range(6)]
    )
    np.testing.assert_array_equal(together, one_by_one)
    assert np.isfinite(together).all()


def _textbook(w: np.ndarray, scale: np.ndarray, gram: np.ndarray, qmax: int) -> np.ndarray:
    """GPTQ as the paper states it, one group, column by column with no blocks: each column's
    error updates every later column at once."""
    k = w.shape[1]
    order = np.argsort(-np.diag(gram), kind="stable")
    h = gram[np.ix_(order, order)].astype(np.float64)
    h[np.arange(k), np.arange(k)] += 0.01 * np.diag(h).mean()
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    work = w[:, order].astype(np.float64)
    q = np.empty_like(work)
    for i in range(k):
        q[:, i] = np.clip(np.round(work[:, i] / scale), -qmax, qmax)
        err = (work[:, i] - q[:, i] * scale) / u[i, i]
        work[:, i + 1 :] -= np.outer(err, u[i, i + 1 :])
    out = np.empty_like(q)
    out[:, order] = q
    return out


def test_the_blocked_sweep_rounds_as_the_column_by_column_one() -> None:
    """The sweep's blocks (BLOCK columns, then one product for the rest) and its layout give
    the integers of the textbook loop, over more than one block."""
    w = RNG.standard_normal((5, 300))
    rows = RNG.standard_normal((400, 300)) @ RNG.standard_normal((300, 300)) * 0.1
    gram = rows.T @ rows / 400
    scale = np.abs(w).max(axis=1) / 127
    got = gptq(w[None], scale[None], gram[None], qmax=127)[0]
    want = _textbook(w, scale, gram, 127)
    assert (got != want).mean() < 0.01  # float64 sums in another order: a tie may round apart
    assert np.abs(got - want).max() <= 1


def test_the_pass_rounds_the_layers_it_keeps_with_error_feedback() -> None:
    w = (RNG.standard_normal((24, 8)) * 0.2).astype(np.float32)
    m = parse(LAYER, {"W": w})
    m.graph.node[0].name = "n0"
    feeds = Feeds([{"x": x} for x in _inputs(16)])
    config = QuantizeConfig(rounding="gptq", fallback=False)
    res = QuantizeInt8(config).run_model(m, PassContext(feeds=feeds, allow_slower=True))
    fed_back, _, cost = learn_rounding(
        m,
        {"n0": 1},
        feeds.runs,
        iterations=1,
        seed=0,
        reduce_range=res.details["reduce_range"],
        method="gptq",
    )
    assert cost["error_feedback"] == 1 and res.details["gptq"]["layers"] == 1
    q = next(
        v for k, v in initializers(res.model).items() if v.dtype == np.int8 and v.shape == w.shape
    )
    np.testing.assert_array_equal(q, fed_back["n0"].q)
    assert not np.array_equal(q, quantize_weight(w, fed_back["n0"].scale, 1))


def test_adaround_feeds_errors_back_where_its_cost_cap_leaves_too_few_steps() -> None:
    w = (RNG.standard_normal((24, 8)) * 0.2).astype(np.float32)
    m = parse(LAYER, {"W": w})
    m.graph.node[0].name = "n0"
    runs = [{"x": x} for x in _inputs(8)]
    kw = dict(iterations=500, seed=0, reduce_range=False)
    capped, notes, cost = learn_rounding(m, {"n0": 1}, runs, max_gflop=1e-6, **kw)
    assert cost == {"layers": 1, "steps": 0, "error_feedback": 1, "seconds": cost["seconds"]}
    assert any("error feedback instead of adaround" in n for n in notes)
    direct, _, _ = learn_rounding(m, {"n0": 1}, runs, method="gptq", **kw)
    np.testing.assert_array_equal(capped["n0"].q, direct["n0"].q)


WIDE = """
<ir_version: 8, opset_import: ["": 17]>
g (float[16,8] x) => (float[16,256] y) {
    h = MatMul (x, W1)
    y = MatMul (h, W2)
}
"""


def test_a_wide_linear_layer_goes_dynamic_with_its_fed_back_weights() -> None:
    """8 inputs to 256 outputs (32x): dynamic int8, its input's range read at run time; the
    8-to-8 layer before it stays static. With ``rounding="gptq"`` the dynamic layer's weights
    are the error-feedback ones too."""
    w1 = (RNG.standard_normal((8, 8)) * 0.3).astype(np.float32)
    w2 = (RNG.standard_normal((8, 256)) * 0.3).astype(np.float32)
    m = parse(WIDE, {"W1": w1, "W2": w2})
    for n, name in zip(m.graph.node, ("narrow", "wide"), strict=True):
        n.name = name
    feeds = Feeds([{"x": RNG.standard_normal((16, 8)).astype(np.float32)} for _ in range(12)])
    ctx = PassContext(feeds=feeds, allow_slower=True)
    res = QuantizeInt8(QuantizeConfig(fallback=False, rounding="gptq")).run_model(m, ctx)
    ops = [n.op_type for n in res.model.graph.node]
    assert sorted(res.sites) == ["narrow", "wide"]
    assert ops.count("DynamicQuantizeLinear") == 1 and ops.count("MatMulInteger") == 1
    integer = next(n for n in res.model.graph.node if n.op_type == "MatMulInteger")
    assert integer.name.startswith("wide")
    narrow = next(n for n in res.model.graph.node if n.name == "narrow")
    producer = {o: n.op_type for n in res.model.graph.node for o in n.output}
    assert [producer.get(i) for i in narrow.input] == ["DequantizeLinear"] * 2  # static QDQ
    q = next(v for k, v in initializers(res.model).items() if v.shape == w2.shape)
    assert q.dtype == np.int8
    h = np.concatenate([r["x"] for r in feeds.runs]) @ w1
    scale = weight_params(w2, 1)
    near = quantize_weight(w2, scale, 1)
    assert _mse(h.astype(np.float64), w2, q, scale) < _mse(h.astype(np.float64), w2, near, scale)


def test_a_bias_correction_moves_by_the_mean_output_change_of_the_new_weights() -> None:
    """The shift measured for weights rounded to nearest, plus the ``moved`` change
    ``E[x]·(W_fed_back − W_nearest)``, is the shift of the fed-back weights: checked against the
    mean output error measured directly (every input row read: 768 rows under ``max_rows``)."""
    w = (RNG.standard_normal((24, 8)) * 0.2).astype(np.float32)
    m = parse(LAYER, {"W": w})
    m.graph.node[0].name = "n0"
    xs = _inputs()
    x = np.concatenate(xs).astype(np.float64)
    moved: dict = {}
    got, _, _ = learn_rounding(
        m,
        {"n0": 1},
        [{"x": v} for v in xs],
        iterations=1,
        seed=0,
        reduce_range=False,
        method="gptq",
        moved=moved,
    )
    q, scale = got["n0"].q, got["n0"].scale.astype(np.float64)
    near = quantize_weight(w, got["n0"].scale, 1)
    w64 = w.astype(np.float64)
    shift_near = (x @ (near * scale) - x @ w64).mean(axis=0)  # what the instrument measures
    shift_fed = (x @ (q * scale) - x @ w64).mean(axis=0)
    assert not np.array_equal(q, near)
    np.testing.assert_allclose(shift_near + moved["n0"], shift_fed, atol=1e-12)


def test_auto_rounding_feeds_errors_back_on_a_graph_with_attention_only() -> None:
    """``rounding="auto"`` (the default) is error feedback where the graph has attention (a
    transformer default), and rounding to nearest elsewhere."""
    w = (RNG.standard_normal((24, 8)) * 0.2).astype(np.float32)
    m = parse(LAYER, {"W": w})
    m.graph.node[0].name = "n0"
    feeds = Feeds([{"x": x} for x in _inputs(16)])
    assert QuantizeConfig().rounding == "auto"
    for transformer, want in ((True, "gptq"), (False, "nearest")):
        config = QuantizeConfig(transformer=transformer, fallback=False, smooth=None)
        res = QuantizeInt8(config).run_model(m, PassContext(feeds=feeds, allow_slower=True))
        assert res.details["rounding"] == want
        assert ("gptq" in res.details) == (want == "gptq")


TWO = """
<ir_version: 8, opset_import: ["": 17]>
g (float[32,24] x) => (float[32,8] y) {
    h = MatMul (x, W)
    y = MatMul (h, V)
}
"""


def test_the_model_the_verification_runs_check_is_the_one_the_pass_returns(monkeypatch) -> None:
    """With the manager's precheck, the search's model to check gets its error feedback
    first (``finish``), and the pass returns that very model when the search keeps it: the
    manager's verdict on it stands. The layers fed back stay fed back: none twice."""
    from onnxopt.passes.quantize import mixed, static
    from onnxopt.verify import Budget

    w = (RNG.standard_normal((24, 24)) * 0.2).astype(np.float32)
    v = (RNG.standard_normal((24, 8)) * 0.2).astype(np.float32)
    m = parse(TWO, {"W": w, "V": v})
    for i, n in enumerate(m.graph.node):
        n.name = f"n{i}"
    checked: list = []
    fed: list[int] = []
    real_feed_back = static.QuantizeInt8._feed_back

    def feed_back(self, build, axes, sites, ctx, notes, details, learned=None):
        fed.append(len([s for s in sites if s not in build.weights]))
        return real_feed_back(self, build, axes, sites, ctx, notes, details, learned)

    def search(build, sites, moves, score, **kw):  # the floor kept: n0 float, n1 int8
        model = kw["finish"]({"n0"}, set())
        assert kw["precheck"](model) == ""
        # the search's own models stay rounded to nearest after it
        nearest = build({"n1"}, set())
        int8 = [_int8_weights(m) for m in (model, nearest)]
        assert len(int8[0]) == len(int8[1]) == 1 and not np.array_equal(int8[0][0], int8[1][0])
        return mixed.Plan(moves=moves, floats=["n0"], met=True)

    monkeypatch.setattr(static.QuantizeInt8, "_feed_back", feed_back)
    monkeypatch.setattr(static.mixed, "search", search)
    feeds = Feeds([{"x": x} for x in _inputs(16)])
    ctx = PassContext(
        feeds=feeds,
        allow_slower=True,
        budget=Budget(min_cosine=0.9),
        precheck=lambda model: checked.append(model) or "",
    )
    config = QuantizeConfig(rounding="gptq", latency_aware=False, smooth=None)
    res = QuantizeInt8(config).run_model(m, ctx)
    assert len(checked) == 1 and res.model is checked[0]
    assert fed == [1] and res.details["gptq"]["layers"] == 1


def _int8_weights(m) -> list[np.ndarray]:
    return [v for v in initializers(m).values() if v.dtype == np.int8 and v.ndim == 2]


def test_a_layer_fed_back_for_the_check_is_not_fed_back_again(monkeypatch) -> None:
    """The search checked its floor (n1 int8, fed back) and then kept more int8 layers: the
    final model's error feedback learns the new layer (n0) alone and reuses n1's."""
    from onnxopt.passes.quantize import mixed, static
    from onnxopt.verify import Budget

    w = (RNG.standard_normal((24, 24)) * 0.2).astype(np.float32)
    v = (RNG.standard_normal((24, 8)) * 0.2).astype(np.float32)
    m = parse(TWO, {"W": w, "V": v})
    for i, n in enumerate(m.graph.node):
        n.name = f"n{i}"
    asked: list[list[str]] = []
    real = static.learn_rounding

    def spy(model, names, *a, **k):
        asked.append(sorted(names))
        return real(model, names, *a, **k)

    def search(build, sites, moves, score, **kw):
        assert kw["precheck"](kw["finish"]({"n0"}, set())) == ""
        return mixed.Plan(moves=moves, floats=[], met=True)  # both int8 in the end

    monkeypatch.setattr(static, "learn_rounding", spy)
    monkeypatch.setattr(static.mixed, "search", search)
    feeds = Feeds([{"x": x} for x in _inputs(16)])
    ctx = PassContext(
        feeds=feeds, allow_slower=True, budget=Budget(min_cosine=0.9), precheck=lambda m: ""
    )
    res = QuantizeInt8(QuantizeConfig(rounding="gptq", latency_aware=False, smooth=None)).run_model(
        m, ctx
    )
    assert asked == [["n1"], ["n0"]] and res.details["gptq"]["layers"] == 2
    assert len(_int8_weights(res.model)) == 2


def test_rows_drawn_in_another_pass_give_the_gram_matrices_of_the_layers_own(monkeypatch) -> None:
    """``RowSampler`` draws a MatMul's input rows as ``gram_matrices`` does: where each run
    holds fewer rows than its share, both read every row and their Gram matrices and mean
    rows agree; error feedback reads them without a pass of its own, to the same weights.
    A smoothed input's rows are scaled as the MatMul then reads them; an input not seen in
    every run gives none."""
    from onnxopt.passes.quantize import adaround
    from onnxopt.passes.quantize.adaround import RowSampler, gram_matrices, layers_of

    w = (RNG.standard_normal((24, 8)) * 0.2).astype(np.float32)
    m = parse(LAYER, {"W": w})
    m.graph.node[0].name = "n0"
    xs = _inputs(16)
    runs = [{"x": x} for x in xs]
    (ly,), _ = layers_of(m, {"n0": 1})
    sampler = RowSampler({"x": "MatMul"}, len(runs), max_rows=2048, seed=0)
    for x in xs:
        sampler.observe("x", x)
        sampler.observe("other", x)  # not sampled: ignored
    means: dict = {}
    own = gram_matrices(m, [ly], runs, max_rows=2048, seed=0, means=means)
    gram, mean = sampler.gram(ly)
    np.testing.assert_allclose(gram, own["n0"], rtol=1e-10)
    np.testing.assert_allclose(mean, means["n0"], rtol=1e-10)

    def no_pass(*a, **k):
        raise AssertionError("a pass over the data")

    kw = dict(iterations=1, seed=0, reduce_range=False, method="gptq")
    want, _, _ = learn_rounding(m, {"n0": 1}, runs, **kw)
    monkeypatch.setattr(adaround, "gram_matrices", no_pass)
    got, _, cost = learn_rounding(m, {"n0": 1}, runs, rows=sampler, **kw)
    np.testing.assert_array_equal(got["n0"].q, want["n0"].q)
    assert cost["error_feedback"] == 1
    s = np.linspace(0.5, 2.0, 24).astype(np.float32)
    sampler.scale("x", "x_smoothed", s)
    gram2, _ = sampler.gram(dataclasses.replace(ly, input="x_smoothed"))
    np.testing.assert_allclose(gram2[0], gram[0] / np.outer(s, s), rtol=1e-5)
    partial = RowSampler({"x": "MatMul"}, len(runs), max_rows=2048, seed=0)
    partial.observe("x", xs[0])
    assert partial.gram(ly) is None


def test_the_calibration_pass_draws_error_feedbacks_rows(monkeypatch) -> None:
    """With smoothing's pass streaming the calibration (``Collected``), the same runs draw
    the MatMuls' input rows, smoothed ones scaled: error feedback then runs no pass of its
    own."""
    from onnxopt.passes.quantize import adaround, mixed, static
    from onnxopt.verify import Budget

    w = (RNG.standard_normal((24, 24)) * 0.2).astype(np.float32)
    v = (RNG.standard_normal((24, 8)) * 0.2).astype(np.float32)
    m = parse(TWO, {"W": w, "V": v})
    for i, n in enumerate(m.graph.node):
        n.name = f"n{i}"

    def no_pass(*a, **k):
        raise AssertionError("a pass over the data")

    def search(build, sites, moves, score, **kw):
        return mixed.Plan(moves=moves, floats=[], met=True)

    monkeypatch.setattr(adaround, "gram_matrices", no_pass)
    monkeypatch.setattr(static.mixed, "search", search)
    feeds = Feeds([{"x": x} for x in _inputs(16)])
    ctx = PassContext(feeds=feeds, allow_slower=True, budget=Budget(min_cosine=0.9))
    config = QuantizeConfig(rounding="gptq", latency_aware=False, smooth=0.5)
    res = QuantizeInt8(config).run_model(m, ctx)
    assert res.details["gptq"]["layers"] == 2 and len(_int8_weights(res.model)) == 2
    assert any(n.startswith("smooth(") for n in res.notes)
