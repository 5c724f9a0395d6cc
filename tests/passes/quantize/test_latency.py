"""Per-layer latency on this CPU: a layer int8 makes slower is left in float, and the notes say
so; the kernels onnxruntime runs are charged to the layers of the planned graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes.quantize import QuantizeInt8, latency, mixed, static
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.passes.quantize.latency import Attribution
from onnxopt.runner import Runner
from onnxopt.timing import Race
from onnxopt.verify import Budget
from tests.helpers import parse

RNG = np.random.default_rng(4)

#: a big convolution (37 M MACs: int8 pays) and a 1x1 convolution on a 2x2 map between two
#: float ops (int8 means a Q, a QLinearConv with layout transposes and a DQ around four MACs)
TWO_REGIONS = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,64,32,32] x, float[1,1,2,2] t) => (float[1,64,32,32] y, float[1,1,2,2] u) {
    c = Conv <pads = [1,1,1,1]> (x, W, B)
    y = Relu (c)
    a = Tanh (t)
    s = Conv (a, Ws, Bs)
    u = Tanh (s)
}
"""


def _model() -> onnx.ModelProto:
    m = parse(
        TWO_REGIONS,
        {
            "W": (RNG.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32),
            "B": RNG.standard_normal(64).astype(np.float32),
            "Ws": RNG.standard_normal((1, 1, 1, 1)).astype(np.float32),
            "Bs": RNG.standard_normal(1).astype(np.float32),
        },
    )
    for node in m.graph.node:
        if node.op_type == "Conv":
            node.name = "big" if node.input[1] == "W" else "tiny"
        else:
            node.name = node.output[0]
    return m


def _feeds() -> Feeds:
    return Feeds(
        [
            {
                "x": RNG.standard_normal((1, 64, 32, 32)).astype(np.float32),
                "t": RNG.standard_normal((1, 1, 2, 2)).astype(np.float32),
            }
            for _ in range(16)
        ]
    )


def _race(a_ms: float, b_ms: float, wins: int) -> Race:
    return Race(a_ms=a_ms, b_ms=b_ms, rounds=10, b_wins=wins, threads=2)


def _whole_race(all_int8_ms: float, float_left_ms: float, float_left_wins: int) -> Race:
    """The placement's race, as :func:`latency.pays_as_a_whole` runs it: all-int8 (a)
    against the model with the slower layers left float (b)."""
    return _race(all_int8_ms, float_left_ms, float_left_wins)


def test_a_region_int8_makes_slower_stays_float(monkeypatch) -> None:
    # the whole-model race that follows (all-int8 against "tiny" left float) differs by
    # about 8 % of a 0.2 ms model, within its noise: its verdict is tested apart, below;
    # here "tiny" float wins it
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(1.0, 0.9, 10))
    m = _model()
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=_feeds()))
    lat = res.details["latency"]
    assert lat["slower_in_int8"] == ["tiny"]
    assert res.changed and res.sites == ["big"]
    assert any(n.startswith("left float: tiny: slower in int8") for n in res.notes)
    tiny = next(n for n in res.model.graph.node if n.name == "tiny")
    assert list(tiny.input) == ["a", "Ws", "Bs"]  # untouched float weights


def test_kernels_are_charged_to_the_layers_they_come_from() -> None:
    m = _model()
    att = Attribution(m, {"big", "tiny"})
    assert att.owners("big_token_3") == ["big"]  # onnxruntime's QLinearConv
    assert att.owners("y_nchwc") == ["big"]  # NCHWc Conv with the Relu fused: the layer's
    assert att.owners("a_QuantizeLinear") == ["tiny"]  # a Q costs the layer that reads it
    assert att.owners("c_DequantizeLinear/duplicated") == ["big"]  # a DQ the one that made it
    assert att.owners("ReorderInput") == []  # left to the optimized graph's neighbours


def test_layers_measured_slower_stay_int8_when_the_whole_model_is_faster(monkeypatch) -> None:
    """The per-layer profile marks "tiny"; the model with it in int8 races faster (as a chain
    of int8 layers can be while each kernel is slower), or the one with it float is not
    faster beyond noise: it stays int8. Float wins beyond noise: it goes float."""
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(0.7, 1.0, 0))
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(
        _model(), PassContext(feeds=_feeds())
    )
    assert res.details["latency"]["slower_in_int8"] == []
    assert sorted(res.sites) == ["big", "tiny"]
    assert any("measured slower in int8 stay int8" in n for n in res.notes)
    # within noise: all int8 (the whole model does not confirm the profile)
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(1.0, 0.99, 5))
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(
        _model(), PassContext(feeds=_feeds())
    )
    assert sorted(res.sites) == ["big", "tiny"]
    assert any("with them float is not faster beyond noise" in n for n in res.notes)
    # "tiny" float faster beyond noise, by 5 % (FLOAT_MARGIN): it goes float
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(1.0, 0.95, 10))
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(
        _model(), PassContext(feeds=_feeds())
    )
    assert res.sites == ["big"]
    assert any("go float: the model is 5% or more faster with them float" in n for n in res.notes)
    assert res.details["latency"]["float_left_raced"] == 0.95
    # faster beyond noise by 3 % only: "tiny" has weights, int8 keeps them smaller: int8
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(1.0, 0.97, 10))
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(
        _model(), PassContext(feeds=_feeds())
    )
    assert sorted(res.sites) == ["big", "tiny"]
    assert any("less than 5% faster with them float" in n for n in res.notes)


#: TWO_REGIONS with a MatMul of two activations (as attention's) between float Tanh ops
WITH_WEIGHTLESS = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,64,32,32] x, float[1,1,2,2] t, float[1,4,4] v) => (
    float[1,64,32,32] y, float[1,1,2,2] u, float[1,4,4] z) {
    c = Conv <pads = [1,1,1,1]> (x, W, B)
    y = Relu (c)
    a = Tanh (t)
    s = Conv (a, Ws, Bs)
    u = Tanh (s)
    p = Tanh (v)
    q = MatMul (p, p)
    z = Tanh (q)
}
"""


def test_on_a_tie_a_slower_layer_without_weights_goes_float(monkeypatch) -> None:
    """The profile marks "tiny" (a 1x1 Conv) and "mm" (a MatMul of two activations) slower;
    the model with them float races all-int8 to a tie. "tiny" stays int8 (its weight is
    smaller in int8); "mm" goes float: int8 would buy it neither speed nor size, only error.
    When all-int8 wins beyond noise, both stay int8; when it wins by less than the 3 % the
    pass asks of int8, "mm" goes float all the same. When float wins beyond noise, "mm" goes
    float, and "tiny" only when float wins by 5 % (FLOAT_MARGIN)."""
    weights = {
        "W": (RNG.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32),
        "B": RNG.standard_normal(64).astype(np.float32),
        "Ws": RNG.standard_normal((1, 1, 1, 1)).astype(np.float32),
        "Bs": RNG.standard_normal(1).astype(np.float32),
    }
    m = parse(WITH_WEIGHTLESS, weights)
    names = {"c": "big", "s": "tiny", "q": "mm"}
    for node in m.graph.node:
        node.name = names.get(node.output[0], node.output[0])
    feeds = Feeds(
        [{**run, "v": RNG.standard_normal((1, 4, 4)).astype(np.float32)} for run in _feeds().runs]
    )
    att = Attribution(m, {"big", "tiny", "mm"})
    assert att.weightless("mm") and not att.weightless("tiny")
    assert not att.weightless("y")  # a Relu: no layer (an Add or a Sigmoid neither)
    # a weight behind a Cast is a weight
    g = parse(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[2, 4] x) => (float[2, 4] y) { wc = Cast <to = 1> (w)\n y = MatMul (x, wc) }",
        {"w": np.eye(4, dtype=np.float32)},
    )
    g.graph.node[1].name = "mm"
    assert not Attribution(g, {"mm"}).weightless("mm")
    # the profile's verdict is pinned: the race is what this test is about
    monkeypatch.setattr(
        latency,
        "slower_sites",
        lambda f, q, enabled, *_: (
            [s for s in enabled if s in ("tiny", "mm")],
            {"big": 500.0, "tiny": -30.0, "mm": -30.0},
        ),
    )
    monkeypatch.setattr(latency, "back_to_int8", lambda *a, **k: [])
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(1.0, 0.99, 5))
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert res.details["latency"]["slower_in_int8"] == ["mm"]
    assert sorted(res.sites) == ["big", "tiny"]
    assert any("1 layers measured slower in int8 stay int8" in n for n in res.notes)
    assert any("with no weights stay float" in n for n in res.notes)
    mm = next(n for n in res.model.graph.node if n.name == "mm")
    assert list(mm.input) == ["p", "p"]  # float
    # all-int8 faster beyond noise: both stay int8
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(0.7, 1.0, 0))
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert sorted(res.sites) == ["big", "mm", "tiny"]
    assert res.details["latency"]["slower_in_int8"] == []
    # faster beyond noise (10 of 10 rounds), by 1.5 %: a tie for the layer without weights
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(0.985, 1.0, 0))
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert sorted(res.sites) == ["big", "tiny"]
    assert any("less than 3% faster with them in int8" in n for n in res.notes)
    # float faster beyond noise by 3 %: "mm" goes float, "tiny" (weights) stays int8
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(1.0, 0.97, 10))
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert sorted(res.sites) == ["big", "tiny"]
    assert any(
        "with no weights stay float: the model is faster with them float" in n for n in res.notes
    )
    # by 5 %: both go float
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(1.0, 0.95, 10))
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert res.sites == ["big"]


def test_a_layer_without_weights_must_be_faster_in_int8_beyond_the_slack() -> None:
    """Within the slack, a layer with weights is not slower; one without weights (which int8
    can only make faster) is, so the whole-model race judges it."""
    f = latency.Timing({"w": 100.0, "a": 100.0, "fast": 100.0}, 300.0)
    q = latency.Timing({"w": 99.0, "a": 99.0, "fast": 80.0}, 278.0)
    slower, gains = latency.slower_sites(f, q, ["w", "a", "fast"], {"a", "fast"})
    assert slower == ["a"] and gains == {"w": 1.0, "a": 1.0, "fast": 20.0}
    assert latency.slower_sites(f, q, ["w", "a", "fast"])[0] == []


def test_a_slightly_slower_layer_holding_most_of_the_weights_stays_int8_for_its_size(
    monkeypatch,
) -> None:
    """The profile marks "big" (almost all the weights) 2 µs slower and "tiny" 30 µs slower;
    "big" stays int8 (4x smaller for a slowdown within noise), "tiny" races and goes float."""
    monkeypatch.setattr(
        latency,
        "slower_sites",
        lambda f, q, enabled, *_: (
            [s for s in enabled if s in ("big", "tiny")],
            {"big": -2.0, "tiny": -30.0},
        ),
    )
    monkeypatch.setattr(latency, "back_to_int8", lambda *a, **k: [])
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(1.0, 0.9, 10))
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(
        _model(), PassContext(feeds=_feeds())
    )
    assert res.details["latency"]["slower_in_int8"] == ["tiny"]
    assert res.sites == ["big"]
    assert any(n.startswith("kept int8 for their size: 1 layer") and "big" in n for n in res.notes)
    # a slowdown past 1 % of the float model's time: float, size or not
    monkeypatch.setattr(
        latency,
        "slower_sites",
        lambda f, q, enabled, *_: (
            [s for s in enabled if s in ("big", "tiny")],
            {"big": -f.total_us * 0.02, "tiny": -30.0},
        ),
    )
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(
        _model(), PassContext(feeds=_feeds())
    )
    assert not any("for their size" in n for n in res.notes)
    assert sorted(res.details["latency"]["slower_in_int8"]) == ["big", "tiny"]


#: int8 layers around a residual Add, and a Conv between float Tanh ops
CHAIN = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,8,4,4] x) => (float[1,8,4,4] y) {
    a = Conv (x, W, B)
    r = Relu (a)
    b = Conv (r, W, B)
    s = Add (a, b)
    c = Conv (s, W, B)
    t = Tanh (c)
    d = Conv (t, W, B)
    y = Tanh (d)
}
"""


def _whole_model_at(monkeypatch, ratio: float) -> list[float]:
    """The whole-model timing (:class:`mixed.SpeedProbe`) reads ``ratio`` of float's time,
    as the mocked profile's machine would; returns the list of ratios it gave."""
    given: list[float] = []
    monkeypatch.setattr(
        mixed.SpeedProbe, "__call__", lambda self, m: given.append(ratio) or (ratio, ratio)
    )
    return given


def _calibrations(monkeypatch) -> list[list[str]]:
    """The tensors of each calibration the pass runs (the statistics are still collected)."""
    calibrated: list[list[str]] = []
    real = static.collect_stats
    monkeypatch.setattr(
        static,
        "collect_stats",
        lambda model, t, *a, **k: calibrated.append(t) or real(model, t, *a, **k),
    )
    return calibrated


def _chain() -> tuple[onnx.ModelProto, Attribution]:
    w = (RNG.standard_normal((8, 8, 1, 1)) * 0.1).astype(np.float32)
    m = parse(CHAIN, {"W": w, "B": np.zeros(8, np.float32)})
    for node in m.graph.node:
        node.name = node.output[0]
    return m, Attribution(m, {"a", "b", "s", "c", "d"})


def test_neighbours_go_through_activations_and_mark_float_boundaries() -> None:
    _, att = _chain()
    assert sorted(latency.neighbours(att, "s")) == ["a", "b", "c"]
    assert sorted(latency.neighbours(att, "b")) == ["a", "s"]  # through the Relu
    assert latency.neighbours(att, "d") == [None, None]  # Tanh before, Tanh then the output
    assert sorted(latency.neighbours(att, "a"), key=str) == [None, "b", "s"]  # a graph input


def test_slightly_slower_layers_between_int8_layers_stay_int8() -> None:
    """1 % of a 10 ms model is 100 µs: the Add (40 µs slower) sits between int8 Convs and
    stays int8; "d" (as slight) sits between float Tanh ops; "a" is much slower."""
    _, att = _chain()
    gains = {"a": -500.0, "s": -40.0, "d": -10.0, "b": 30.0, "c": 20.0}
    assert latency.back_to_int8(att, ["a", "s", "d"], gains, 10_000.0, set()) == []  # a: big
    gains["a"] = 50.0
    assert latency.back_to_int8(att, ["s", "d"], gains, 10_000.0, set()) == ["s"]
    assert latency.back_to_int8(att, ["s"], gains, 10_000.0, {"c"}) == []  # c went float
    # the slowdowns kept add up to at most 1 % of the model: 70 µs already kept leave 30
    assert latency.back_to_int8(att, ["s"], gains, 10_000.0, set(), spent_us=70.0) == []


def test_the_whole_model_race_runs_whatever_the_profile_totals_say(monkeypatch) -> None:
    """ "tiny" in int8 is slower: the all-int8 model is raced against the one with it float,
    whatever the profile's totals (sums of kernel times, which on an AMD EPYC put a
    MobileNetV2's placement ahead of all-int8 where whole runs put it 18 % behind)."""
    raced = []
    monkeypatch.setattr(latency, "PROFILE_TRUSTED_US", 0.0)  # this 0.3 ms model's totals too
    monkeypatch.setattr(
        latency, "race", lambda *a, **k: raced.append(1) or _whole_race(0.7, 1.0, 0)
    )
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(
        _model(), PassContext(feeds=_feeds())
    )
    assert raced and sorted(res.sites) == ["big", "tiny"]
    assert not any("no whole-model race" in n for n in res.notes)


def test_the_pass_keeps_a_slightly_slower_add_between_int8_convs(monkeypatch) -> None:
    """The pass's placement with the profile's numbers given: the residual Add measured 40 µs
    slower in int8 (0.4 % of the model) between int8 Convs stays int8, and one note says so."""
    m, _ = _chain()

    def measure_all(models, feed, att, **kw):
        fl = {"a": 2000.0, "b": 2000.0, "s": 0.0, "c": 2000.0, "d": 2000.0}
        q = {"a": 1000.0, "b": 1000.0, "s": 40.0, "c": 1000.0, "d": 1000.0}
        return [latency.Timing(fl, 10_000.0, 6), latency.Timing(q, 6_000.0, 6)]

    _whole_model_at(monkeypatch, 0.6)
    monkeypatch.setattr(latency, "measure_all", measure_all)
    feeds = Feeds([{"x": RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)} for _ in range(8)])
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert "s" in res.sites and res.details["latency"]["slower_in_int8"] == []
    note = next(n for n in res.notes if n.startswith("kept int8: 1 layer measured slightly slower"))
    assert note.endswith(": s") and "(40-40 µs each)" in note


def test_a_model_int8_cannot_speed_up_is_left_float_without_a_search(monkeypatch) -> None:
    """The profile times the int8 model (its slower layers left float) at NO_GAIN_ABOVE times
    the float model's time or more: the pass stops there, unchanged, and says why, without
    timing the model whole. A model too short for the profile's totals (float under
    PROFILE_TRUSTED_US) is timed whole instead, and quantized when that finds it faster."""
    m, _ = _chain()
    total = [10_000.0]

    def measure_all(models, feed, att, **kw):
        fl = {"a": 1000.0, "b": 1000.0, "s": 0.0, "c": 1000.0, "d": 1000.0}
        q = {"a": 990.0, "b": 990.0, "s": 0.0, "c": 990.0, "d": 990.0}  # each a bit faster ...
        return [latency.Timing(fl, total[0], 6), latency.Timing(q, total[0] * 1.25, 6)]  # ...

    monkeypatch.setattr(latency, "measure_all", measure_all)
    given = _whole_model_at(monkeypatch, 0.6)
    feeds = Feeds([{"x": RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)} for _ in range(8)])
    ctx = PassContext(feeds=feeds, budget=Budget(min_cosine=0.99), runner=Runner())
    res = QuantizeInt8().run_model(m, ctx)
    assert not res.changed and "tradeoff" not in res.details and not given
    assert any(n.startswith("int8 does not make this model faster on this CPU") for n in res.notes)
    # --allow-slower: no profile, no such stop
    ctx = PassContext(
        feeds=feeds, budget=Budget(min_cosine=0.99), runner=Runner(), allow_slower=True
    )
    assert QuantizeInt8().run_model(m, ctx).changed
    # a 1 ms float model: the profile's 25 % excess is its per-kernel overhead, timed whole
    total[0] = 1_000.0
    ctx = PassContext(feeds=feeds, budget=Budget(min_cosine=0.99), runner=Runner())
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, ctx)
    assert res.changed and given == [0.6]


def test_a_profile_slightly_above_float_is_checked_whole(monkeypatch) -> None:
    """Profiled 10 % above float (within the per-node profile's noise: the PP-OCRv5
    recognizer's placement read 1.11x float profiled and runs in 0.64x its time), the model is
    timed whole in turns with the float one before the pass gives up: read 0.6x, it is
    quantized; read 0.99x (twice), it stays float, and the note gives the timing."""
    m, _ = _chain()

    def measure_all(models, feed, att, **kw):
        fl = {"a": 1000.0, "b": 1000.0, "s": 0.0, "c": 1000.0, "d": 1000.0}
        q = {"a": 990.0, "b": 990.0, "s": 0.0, "c": 990.0, "d": 990.0}
        return [latency.Timing(fl, 10_000.0, 6), latency.Timing(q, 11_000.0, 6)]

    monkeypatch.setattr(latency, "measure_all", measure_all)
    feeds = Feeds([{"x": RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)} for _ in range(8)])
    given = _whole_model_at(monkeypatch, 0.6)
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert res.changed and given == [0.6]
    assert res.details["latency"]["whole_model"]["ratio"] == 0.6
    given = _whole_model_at(monkeypatch, 0.99)
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert not res.changed and given == [0.99, 0.99]
    assert "0.99x the float model's time" in res.notes[0]


def test_a_later_round_judges_only_the_neighbours_of_layers_gone_float(monkeypatch) -> None:
    """Round 1 finds "a" slower in int8; round 2 (shorter) times "b", a neighbour of "a", and
    "d", far from it, slower: "b" goes float, "d" keeps its first-round gain (its context did
    not change: a slower reading there is the shorter round's noise)."""
    m, _ = _chain()
    seconds: list[float] = []

    def measure_all(models, feed, att, **kw):
        seconds.append(kw["seconds"])
        fl = {"a": 1000.0, "b": 1000.0, "s": 100.0, "c": 1000.0, "d": 1000.0}
        q = {"a": 3000.0, "b": 500.0, "s": 50.0, "c": 500.0, "d": 500.0}
        if len(seconds) > 1:
            q = {**q, "b": 3000.0, "d": 3000.0}
        return [latency.Timing(fl, 10_000.0, 6), latency.Timing(q, 6_000.0, 6)]

    _whole_model_at(monkeypatch, 0.6)
    monkeypatch.setattr(latency, "measure_all", measure_all)
    # a 0.1 ms model: the race's verdict mocked, the layers left float win it
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(1.0, 0.9, 10))
    feeds = Feeds([{"x": RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)} for _ in range(8)])
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert sorted(res.details["latency"]["slower_in_int8"]) == ["a", "b"]
    assert sorted(res.sites) == ["c", "d", "s"]
    assert res.details["latency"]["gain_us"]["d"] == 500.0  # the first round's
    assert seconds[0] > seconds[1]


def test_no_second_round_when_the_first_shows_int8_cannot_pay(monkeypatch) -> None:
    """Round 1: "a" is 900 µs slower in int8; with it float the int8 model would still take
    12,600 µs against 10,000 in float, and all-int8 13,500 (35 % above float). No second round
    (it could only add Q/DQ at the new float boundary), no whole-model race: float. With
    all-int8 profiled only 10 % above float the race runs, and when it finds all-int8 faster
    the measurement wins over the profile: no "cannot pay" stop."""
    m, _ = _chain()
    calls: list[int] = []
    total = [13_500.0]

    def measure_all(models, feed, att, **kw):
        calls.append(1)
        fl = {"a": 100.0, "b": 2000.0, "s": 0.0, "c": 2000.0, "d": 2000.0}
        q = {"a": 1000.0, "b": 1900.0, "s": 0.0, "c": 2000.0, "d": 2000.0}
        return [latency.Timing(fl, 10_000.0, 6), latency.Timing(q, total[0], 6)]

    _whole_model_at(monkeypatch, 0.6)
    monkeypatch.setattr(latency, "measure_all", measure_all)
    monkeypatch.setattr(latency, "race", lambda *a, **k: pytest.fail("no race expected"))
    feeds = Feeds([{"x": RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)} for _ in range(8)])
    ctx = PassContext(feeds=feeds, budget=Budget(min_cosine=0.9), runner=Runner())
    res = QuantizeInt8().run_model(m, ctx)
    assert calls == [1] and not res.changed
    assert res.notes[0].startswith("int8 does not make this model faster on this CPU")
    assert "at 12600 µs against 10000 µs" in res.notes[0]
    total[0] = 11_000.0
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(0.8, 1.0, 0))
    res = QuantizeInt8().run_model(m, ctx)
    assert res.changed and "a" in res.sites
    assert res.details["latency"]["all_int8_raced"] == 0.8


def test_a_profile_gain_under_sure_gain_is_timed_whole_and_one_above_is_believed(
    monkeypatch,
) -> None:
    """PP-OCRv5's recognizer on an AMD EPYC: the profile sums its int8 placement to 35 % under
    float, the whole model runs 1.19x float's time: the pass ends before calibrating, that
    reading far enough above the margin not to be timed again (RETIME_BAND). A profile
    gain of 55 % (MobileNetV2) is believed: no whole-model timing before calibration."""
    m, _ = _chain()
    profiled = {"gain": 0.35}
    assert profiled["gain"] < static.SURE_GAIN < 0.55

    def measure_all(models, feed, att, **kw):
        fl = {"a": 2000.0, "b": 2000.0, "s": 0.0, "c": 2000.0, "d": 2000.0}
        q = {k: v * (1 - profiled["gain"]) for k, v in fl.items()}
        total = 10_000.0
        return [latency.Timing(fl, total, 6), latency.Timing(q, total * (1 - profiled["gain"]), 6)]

    calibrated = _calibrations(monkeypatch)
    monkeypatch.setattr(latency, "measure_all", measure_all)
    given = _whole_model_at(monkeypatch, 1.19)
    feeds = Feeds([{"x": RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)} for _ in range(8)])
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert not res.changed and given == [1.19] and not calibrated
    assert "1.19x the float model's time" in res.notes[0]
    profiled["gain"] = 0.55
    given = _whole_model_at(monkeypatch, 1.19)
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert res.changed and given == [] and len(calibrated) == 1


def test_whole_model_timing_overrules_a_profile_that_finds_a_small_gain(monkeypatch) -> None:
    """The profile sums layer times to 6 % under float, the model timed whole in turns with
    the float one reads 0.99x, twice: the pass stops before calibrating, unchanged, and says
    why. Read 0.6x, it calibrates only the tensors of the sites the profile kept int8."""
    m, _ = _chain()

    def measure_all(models, feed, att, **kw):
        fl = {"a": 100.0, "b": 2000.0, "s": 0.0, "c": 2000.0, "d": 2000.0}
        q = {"a": 900.0, "b": 1500.0, "s": 0.0, "c": 1500.0, "d": 1500.0}  # a slower
        return [latency.Timing(fl, 10_000.0, 6), latency.Timing(q, 9_400.0, 6)]

    calibrated = _calibrations(monkeypatch)
    monkeypatch.setattr(latency, "measure_all", measure_all)
    # the race of all-int8 against "a" left float would time two 0.1 ms models within each
    # other's noise (on CI it put "a" back in int8): here "a" float wins it
    monkeypatch.setattr(latency, "race", lambda *a, **k: _whole_race(1.0, 0.9, 10))
    given = _whole_model_at(monkeypatch, 0.99)
    feeds = Feeds([{"x": RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)} for _ in range(8)])
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert not res.changed and given == [0.99, 0.99] and not calibrated  # a "no" timed twice
    assert res.notes[0].startswith("int8 does not make this model faster on this CPU")
    assert "0.99x the float model's time" in res.notes[0]
    given = _whole_model_at(monkeypatch, 0.6)
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert res.changed and "a" not in res.sites and given == [0.6]
    assert len(calibrated) == 1 and "x" not in calibrated[0]  # a's input: a stayed float
    assert res.details["latency"]["whole_model"]["ratio"] == 0.6


def test_when_the_placement_does_not_pay_its_largest_layers_are_timed_alone(monkeypatch) -> None:
    """The placement of four Convs and an Add, timed whole, runs 1.19x float's time (their
    Q/DQ glue in a slow regime); "a", which the profile credits with 30 % of float's time,
    runs 0.8x alone: only "a" is calibrated and quantized. Alone at 1.05x too, the model stays
    float, untouched."""
    m, _ = _chain()

    def measure_all(models, feed, att, **kw):
        fl = {"a": 4000.0, "b": 1500.0, "s": 100.0, "c": 1500.0, "d": 1500.0}
        q = {"a": 1000.0, "b": 1400.0, "s": 100.0, "c": 1400.0, "d": 1400.0}
        return [latency.Timing(fl, 10_000.0, 6), latency.Timing(q, 6_800.0, 6)]

    def whole_at(alone: float) -> list[int]:
        """Each timing's count of int8 Convs; the placement reads 1.19x, "a" alone ``alone``."""
        seen: list[int] = []

        def probe(self, model):
            n = sum(1 for node in model.graph.node if node.op_type == "QuantizeLinear")
            seen.append(n)
            ratio = alone if n <= 2 else 1.19
            return ratio, ratio

        monkeypatch.setattr(mixed.SpeedProbe, "__call__", probe)
        return seen

    calibrated = _calibrations(monkeypatch)
    monkeypatch.setattr(latency, "measure_all", measure_all)
    feeds = Feeds([{"x": RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)} for _ in range(8)])
    seen = whole_at(0.8)
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert res.changed and res.sites == ["a"]
    # the placement once (1.19x: too far above the margin to be timed again), then "a" alone
    assert len(seen) == 2 and seen[-1] <= 2
    assert len(calibrated) == 1
    assert any(n.startswith("int8 pays on 1 layer alone") for n in res.notes)
    assert res.details["latency"]["core_model"]["layers"] == 1
    calibrated.clear()
    seen = whole_at(1.05)
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(m, PassContext(feeds=feeds))
    assert not res.changed and not calibrated
    assert "1.19x the float model's time" in res.notes[0]


def test_when_every_layer_int8_times_slower_in_the_search_its_largest_layers_alone_are_tried(
    monkeypatch,
) -> None:
    """The profile credits int8 with half of float's time, so the placement is not timed whole;
    the search's all-int8 model misses the budget and times 1.19x float's (the slow regime's
    Q/DQ glue), which used to end the search: float. Now "a", which the profile credits with
    30 % of float's time, is timed alone (0.8x), scored within budget, and kept alone. Alone
    at 1.05x, or over budget, the model stays float."""
    from onnxopt.passes.quantize import fallback

    m, _ = _chain()

    def measure_all(models, feed, att, **kw):
        fl = {"a": 4000.0, "b": 1500.0, "s": 100.0, "c": 1500.0, "d": 1500.0}
        q = {"a": 1000.0, "b": 1400.0, "s": 100.0, "c": 1400.0, "d": 1400.0}
        return [latency.Timing(fl, 10_000.0, 6), latency.Timing(q, 5_000.0, 6)]

    def int8_layers(model) -> int:
        return sum(1 for node in model.graph.node if node.op_type == "QuantizeLinear")

    scored: list[str] = []

    def setup(alone: float, alone_ok: bool) -> list[int]:
        seen: list[int] = []

        def probe(self, model):
            n = int8_layers(model)
            seen.append(n)
            ratio = alone if n <= 2 else 1.19
            return ratio, ratio

        def score(self, model, label="", **kw):
            scored.append(label)
            ok = int8_layers(model) <= 2 and alone_ok
            return ok, "" if ok else "over the budget", 1.0 if ok else 0.0

        monkeypatch.setattr(mixed.SpeedProbe, "__call__", probe)
        monkeypatch.setattr(fallback.Judge, "deployed_score", score)
        monkeypatch.setattr(fallback.Judge, "literal_score", score)
        return seen

    monkeypatch.setattr(latency, "measure_all", measure_all)
    feeds = Feeds([{"x": RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)} for _ in range(8)])

    def ctx() -> PassContext:
        return PassContext(feeds=feeds, budget=Budget(min_cosine=0.99))

    seen = setup(0.8, True)
    res = QuantizeInt8(QuantizeConfig()).run_model(m, ctx())
    assert res.changed and res.sites == ["a"]
    assert seen[-1] <= 2 and max(seen) > 2  # all int8 timed (slower), then "a" alone
    assert any(n.startswith("int8 pays on 1 layer alone: with every layer int8") for n in res.notes)
    assert scored[-1] == "4 in float"  # the search's label: the report marks this row chosen
    for alone, ok in ((1.05, True), (0.8, False)):
        seen = setup(alone, ok)
        res = QuantizeInt8(QuantizeConfig()).run_model(m, ctx())
        assert not res.changed, (alone, ok)
        assert seen[-1] <= 2  # "a" alone was timed, and refused


def test_a_slower_layer_kept_for_its_int8_neighbours_goes_float_when_they_do() -> None:
    """The Add "s" (measured 40 µs slower in int8) sits between the Convs a, b and c: kept int8
    while they are. When the search returns b to float, "s" is no longer between int8 layers
    and goes float too; a layer the profile found faster in int8 stays, whatever its
    neighbours; with every neighbour int8, nothing moves."""
    m, _ = _chain()
    sites = ["a", "b", "s", "c", "d"]
    gains = {"a": 500.0, "b": 300.0, "s": -40.0, "c": 200.0, "d": 100.0}
    assert static._isolated(m, mixed.Plan(floats=["b"]), sites, gains) == ["s"]
    assert static._isolated(m, mixed.Plan(dynamic=["b"]), sites, gains) == ["s"]
    assert static._isolated(m, mixed.Plan(floats=[]), sites, gains) == []
    assert static._isolated(m, mixed.Plan(floats=["b"]), sites, {**gains, "s": 10.0}) == []
    assert static._isolated(m, mixed.Plan(floats=["s"]), sites, gains) == []
    # "a" (slower in int8, next to the graph input: never between int8 layers) stays when the
    # search moved none of its neighbours (the whole-model race kept it), goes when it did
    slow_a = {**gains, "a": -900.0}
    assert static._isolated(m, mixed.Plan(floats=["d"]), sites, slow_a) == []
    assert static._isolated(m, mixed.Plan(floats=["b"]), sites, slow_a) == ["a", "s"]


def test_the_float_left_race_stops_once_clear_of_the_margin(monkeypatch) -> None:
    """pays_as_a_whole asks the race to stop at six rounds once the ratio is RACE_CLEAR away
    (3 points past FLOAT_MARGIN), and float_pays reads the rounds' ratio."""
    from onnxopt.passes.quantize import latency as lat
    from onnxopt.timing import Race

    seen = {}

    def fake_race(a, b, feed, **kw):
        seen.update(kw)
        # all-int8 (a) against the float-left placement (b): pooled medians say 0.97, the
        # rounds 0.88
        return Race(10.0, 9.7, 6, 6, 2, round_ratio=0.88)

    monkeypatch.setattr(lat, "race", fake_race)
    r = lat.pays_as_a_whole(None, None, {})
    assert seen["early_decisive"] == lat.RACE_CLEAR < 1.0 - lat.FLOAT_MARGIN
    assert lat.float_pays(r)  # 0.88 by round: 5 % or more faster, whatever the pooled medians
    assert "by round" in r.reversed().describe()


def test_a_task_metric_budget_keeps_the_profiles_placement_unraced(monkeypatch) -> None:
    """With a task metric as the budget (``--metric``), the search scores its floor first
    (static.FLOOR_FIRST): the placement race, which can only put layers measured slower back
    into int8, is not run before calibrating, and "tiny" goes float as the profile has it.
    Any other budget races it as before."""
    from onnxopt.metric import TaskMetric

    raced = []
    monkeypatch.setattr(latency, "PROFILE_TRUSTED_US", 0.0)  # this 0.3 ms model's totals too
    monkeypatch.setattr(
        latency, "race", lambda *a, **k: raced.append(1) or _whole_race(0.7, 1.0, 0)
    )
    metric = TaskMetric(lambda runs, labels: 100.0, "always")
    ctx = PassContext(feeds=_feeds(), budget=Budget(min_cosine=None, metric=metric))
    res = QuantizeInt8(QuantizeConfig(fallback=True)).run_model(_model(), ctx)
    assert not raced and res.details["latency"]["slower_in_int8"] == ["tiny"]
    assert any("as the profile has it (not raced whole" in n for n in res.notes)
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(_model(), ctx)
    assert raced and sorted(res.sites) == ["big", "tiny"]
