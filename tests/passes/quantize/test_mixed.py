"""Mixed precision: the planted sensitive layer, and only it, leaves int8; moves are ordered by
accuracy bought per microsecond; the trade-off curve of the search."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes.quantize import QuantizeInt8, mixed, static
from onnxopt.passes.quantize.config import QuantizeConfig
from onnxopt.passes.quantize.sensitivity import SiteStats
from onnxopt.runner import Runner
from onnxopt.verify import Budget, compare

RNG = np.random.default_rng(2)

TEXT = """
<ir_version: 8, opset_import: ["": 17]>
g (float[4,16] x) => (float[4,8] y) {
    h1 = MatMul (x, W1)
    h2 = MatMul (h1, W2)
    r2 = Relu (h2)
    y = MatMul (r2, W3)
}
"""


def _model() -> onnx.ModelProto:
    w1 = RNG.standard_normal((16, 16)).astype(np.float32) * 0.25
    w1[:, 0] *= 2000.0  # h1 channel 0 is a huge outlier ...
    w2 = RNG.standard_normal((16, 16)).astype(np.float32) * 0.25
    w2[0, :] = 0.0  # ... that W2 ignores: per-tensor quantizing h1 (MatMul_1's input) wrecks it
    w3 = RNG.standard_normal((16, 8)).astype(np.float32) * 0.25
    m = onnx.parser.parse_model(TEXT)
    for n, node in enumerate(m.graph.node):
        node.name = f"mm{n}" if node.op_type == "MatMul" else "relu"
    m.graph.initializer.extend(
        numpy_helper.from_array(v, k) for k, v in {"W1": w1, "W2": w2, "W3": w3}.items()
    )
    return m


def _feeds(n: int = 24) -> Feeds:
    return Feeds([{"x": RNG.standard_normal((4, 16)).astype(np.float32)} for _ in range(n)])


def _float_moves(n: int) -> tuple[list[str], list[mixed.Move]]:
    """Sites ``s0`` .. ``s{n-1}`` and one move to float each, in that order."""
    sites = [f"s{i}" for i in range(n)]
    return sites, [mixed.Move(s, "float", 1.0, 10.0, 1.0) for s in sites]


def _search_float(sites: list[str], moves: list[mixed.Move], needed: int, **kw) -> mixed.Plan:
    """``mixed.search`` over :func:`_float_moves`-style moves where a model is its number of
    float sites and meets the budget from ``needed`` moves on (its headline: that number)."""
    n = len(sites)
    return mixed.search(
        lambda e, d: n - len(e),
        sites,
        moves,
        lambda m, label="": (m >= needed, "text changed", float(m)),
        float_at_end=True,
        **kw,
    )


def test_planner_picks_the_planted_layer_and_only_it() -> None:
    m, feeds = _model(), _feeds()
    budget = Budget(min_cosine=0.999)
    ctx = PassContext(feeds=feeds, budget=budget, runner=Runner(), allow_slower=True)
    config = QuantizeConfig(calibrator="minmax", dynamic_fallback=False)
    res = QuantizeInt8(config).run_model(m, ctx)
    assert res.changed
    assert [r["node"] for r in res.details["float_nodes"]] == ["mm1"]
    assert sorted(res.sites) == ["mm0", "mm3"]
    # the instrumented run ranked it first: the lowest SQNR of the three
    sens = res.details["sensitivity"]
    assert min(sens, key=lambda k: sens[k]["sqnr_db"]) == "mm1"
    comp = compare(Runner().run(m, feeds), Runner().run(res.model, feeds))
    assert budget.check(comp).ok
    mm1 = next(n for n in res.model.graph.node if n.name == "mm1")
    assert list(mm1.input) == ["h1", "W2"]  # the float MatMul reads unquantized h1
    curve = res.details["tradeoff"]
    # all int8 misses; the probe one move short of the end (2 float) and then 1 float meet it
    assert [p["float_layers"] for p in curve] == [0, 1, 2]


def test_a_bisection_trial_quantizes_the_sites_it_is_given_without_a_search() -> None:
    """The manager's bisection re-runs the pass with some sites allowed: those go to int8 as
    they are, even the planted one that the budget would send back to float."""
    m, feeds = _model(), _feeds()
    ctx = PassContext(
        feeds=feeds,
        budget=Budget(min_cosine=0.999),
        runner=Runner(),
        allow_slower=True,
        site_filter={"mm0", "mm1"},
    )
    config = QuantizeConfig(calibrator="minmax", dynamic_fallback=False)
    res = QuantizeInt8(config).run_model(m, ctx)
    assert sorted(res.sites) == ["mm0", "mm1"]
    assert "tradeoff" not in res.details and res.details["float_nodes"] == []
    assert "bisection trial: the sites allowed in int8, without a new search" in res.notes
    mm1 = next(n for n in res.model.graph.node if n.name == "mm1")
    assert list(mm1.input) != ["h1", "W2"]  # quantized input and weight


def test_a_trial_after_the_first_run_reuses_its_calibration(monkeypatch) -> None:
    """With the manager's memo, a bisection trial builds on the first run's calibration and
    placement (no second calibration) and quantizes exactly the allowed sites; the model
    equals the one a trial that redoes everything builds."""
    m, feeds = _model(), _feeds()
    config = QuantizeConfig(calibrator="minmax", dynamic_fallback=False)
    memo: dict = {}
    kw = {"feeds": feeds, "budget": Budget(min_cosine=0.999), "runner": Runner()}
    kw["allow_slower"] = True
    q = QuantizeInt8(config)
    q.run_model(m, PassContext(**kw, memo=memo))
    calls: list[int] = []
    real = QuantizeInt8._calibrate
    monkeypatch.setattr(
        QuantizeInt8, "_calibrate", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    res = q.run_model(m, PassContext(**kw, memo=memo, site_filter={"mm0", "mm1"}))
    assert not calls and sorted(res.sites) == ["mm0", "mm1"]
    assert any(n.startswith("bisection trial: the first run's calibration") for n in res.notes)
    redone = QuantizeInt8(config).run_model(m, PassContext(**kw, site_filter={"mm0", "mm1"}))
    assert calls == [1]
    out = Runner().run(res.model, feeds)
    ref = Runner().run(redone.model, feeds)
    assert all(np.array_equal(a, b) for x, y in zip(out, ref) for a, b in zip(x, y))
    # nothing allowed that the first run placed: unchanged
    assert not q.run_model(m, PassContext(**kw, memo=memo, site_filter={"relu"})).changed
    # a MatMul the search sent to dynamic int8 stays dynamic in the trials
    memo["quantize-int8"].dynamic = {"mm1"}
    res = q.run_model(m, PassContext(**kw, memo=memo, site_filter={"mm0", "mm1"}))
    assert "DynamicQuantizeLinear" in {n.op_type for n in res.model.graph.node}
    # a model above the memo's size keeps no copy: its trials redo the work
    monkeypatch.setattr(static, "MEMO_MAX_BYTES", 0)
    memo.clear()
    q.run_model(m, PassContext(**kw, memo=memo))
    assert memo == {}


def _stats(sqnr_db: float, dyn_db: float | None = None) -> SiteStats:
    s = SiteStats("x", channels=1, s1=np.zeros(1), s2=np.ones(1), sig=10 ** (sqnr_db / 10))
    s.count = 1.0
    if dyn_db is not None:
        s.noise_dyn = 10 ** ((sqnr_db - dyn_db) / 10)
    return s


def test_moves_weigh_noise_against_the_time_given_back() -> None:
    stats = {"big": _stats(20.0), "cheap": _stats(30.0), "mm": _stats(10.0, dyn_db=25.0)}
    gains = {"big": 1000.0, "cheap": 1.0, "mm": 50.0}
    moves = mixed.order_moves(
        ["big", "cheap", "mm"], stats, gains, total_us=2000.0, corrected=set(), dynamic=True
    )
    assert [(m.site, m.to) for m in moves][:3] == [
        ("mm", "dynamic"),  # 10 dB -> 25 dB for half its gain
        ("cheap", "float"),  # little noise, but almost no time lost
        ("big", "float"),  # more noise, but 1 ms of int8 speed
    ]
    assert ("mm", "float") in [(m.site, m.to) for m in moves[3:]]
    assert mixed.apply(moves[:1]) == (set(), {"mm"})


def test_search_finds_the_smallest_prefix_and_records_the_curve() -> None:
    sites = ["a", "b", "c", "d"]
    moves = [mixed.Move(s, "float", 1.0, 10.0, 1.0) for s in sites]

    def build(enabled: set[str], dynamic: set[str]) -> str:
        return ",".join(sorted(enabled))

    def score(model: str, label: str = "") -> tuple[bool, str, float]:
        floats = 4 - len([x for x in model.split(",") if x])
        return floats >= 3, "too few float", 0.9 + 0.03 * floats

    def speed(model: str) -> tuple[float, float]:  # each site in int8 saves 10 % of float
        return 1.0 + len(model), 0.9 - 0.1 * len([x for x in model.split(",") if x])

    plan = mixed.search(build, sites, moves, score, speed=speed)
    assert plan.met and plan.floats == ["a", "b", "c"] and plan.dynamic == []
    ks = [p["float_layers"] for p in plan.tradeoff]
    assert ks == sorted(ks) and 0 in ks and 3 in ks and 2 in ks
    assert all({"float_layers", "metric", "latency_ms"} <= set(p) for p in plan.tradeoff)


def test_all_int8_within_budget_at_once_is_not_timed() -> None:
    """The search ends at its first model: timing it would repeat the manager's race."""
    sites = ["a", "b"]
    moves = [mixed.Move(s, "float", 1.0, 10.0, 1.0) for s in sites]

    def speed(model: str) -> tuple[float, float]:
        raise AssertionError("no timing expected")

    plan = mixed.search(
        lambda e, d: ",".join(sorted(e)),
        sites,
        moves,
        lambda m, lb="": (True, "", 1.0),
        speed=speed,
    )
    assert plan.met and plan.floats == [] and plan.speed_ratio is None
    assert plan.tradeoff == [
        {
            "float_layers": 0,
            "dynamic_layers": 0,
            "metric": 1.0,
            "ok": True,
            "latency_ms": None,
            "chosen": True,  # the model kept: the report rings it
        }
    ]


def test_search_goes_on_above_a_prefix_its_confirmation_refuses() -> None:
    """The cheap verdict (deployed) passes 3 float sites, the confirmation (literal graph)
    wants 4: the search confirms only the prefix it settles on, and continues above it."""
    sites = ["a", "b", "c", "d", "e", "f"]
    moves = [mixed.Move(s, "float", 1.0, 10.0, 1.0) for s in sites]
    confirmed: list[int] = []

    def build(enabled: set[str], dynamic: set[str]) -> str:
        return ",".join(sorted(enabled))

    def floats(model: str) -> int:
        return 6 - len([x for x in model.split(",") if x])

    def score(model: str, label: str = "") -> tuple[bool, str, float]:
        return floats(model) >= 3, "deployed: too few float", 0.0

    def confirm(model: str, label: str = "") -> tuple[bool, str, float]:
        confirmed.append(floats(model))
        return floats(model) >= 4, "literal: too few float", 0.0

    plan = mixed.search(build, sites, moves, score, confirm=confirm)
    assert plan.met and plan.floats == ["a", "b", "c", "d"]
    assert confirmed == [3, 4]
    # refused at 3, the search scores the prefixes above with the confirmation alone
    scored: list[int] = []

    def counted(model: str, label: str = "") -> tuple[bool, str, float]:
        scored.append(floats(model))
        return score(model, label)

    confirmed.clear()
    plan = mixed.search(build, sites, moves, counted, confirm=confirm)
    assert plan.floats == ["a", "b", "c", "d"] and 4 not in scored and confirmed == [3, 4]
    events: list[tuple[str, int]] = []  # a wider gap: the deployed verdict 3, the literal 7

    def cheap(m: int, label: str = "") -> tuple[bool, str, float]:
        events.append(("deployed", m))
        return m >= 3, "deployed", 0.0

    def literal(m: int, label: str = "") -> tuple[bool, str, float]:
        events.append(("literal", m))
        return m >= 7, "literal", 0.0

    sites12 = [f"s{i}" for i in range(12)]
    moves12 = [mixed.Move(s, "float", 1.0, 10.0, 1.0) for s in sites12]
    plan = mixed.search(lambda e, d: 12 - len(e), sites12, moves12, cheap, confirm=literal)
    assert plan.met and len(plan.floats) == 7
    refused = events.index(("literal", 3))
    assert all(kind == "literal" for kind, _ in events[refused:])
    assert events.count(("literal", 7)) == 1  # scored literally: not confirmed again

    plan = mixed.search(build, sites, moves, score)  # no confirmation: the cheap verdict
    assert plan.floats == ["a", "b", "c"]


def test_fallback_steps_are_trade_off_candidates() -> None:
    m, feeds = _model(), _feeds()
    ctx = PassContext(
        feeds=feeds, budget=Budget(min_cosine=0.999), runner=Runner(), measure_candidates=True
    )
    res = QuantizeInt8(QuantizeConfig(calibrator="minmax", latency_aware=False)).run_model(m, ctx)
    cands = res.details["candidates"]
    labels = [c["label"] for c in cands]
    assert labels[:2] == ["float (the input)", "all int8"] and "1 in float" in labels
    assert cands[0]["reference"] and cands[0]["cosine"] == 1.0
    assert not cands[1]["ok"]  # the fully quantized model misses the budget
    chosen = [c for c in cands if c["chosen"]]
    assert [c["label"] for c in chosen] == ["1 in float"] and chosen[0]["ok"]
    assert all(c["latency_ms"] > 0 for c in cands)
    # the search's curve: its axes for the report, the kept model's point marked
    axes = res.details["tradeoff_axes"]
    assert axes["metric"] == "cosine vs the input" and axes["floor"] == 0.999
    curve = res.details["tradeoff"]
    assert [p["float_layers"] for p in curve if p.get("chosen")] == [1]
    assert all(p["ok"] == (p["metric"] >= 0.999) for p in curve)


def test_search_does_not_run_the_all_float_model() -> None:
    """Every prefix with an int8 site misses the budget: the search ends on the float model
    (every move made) without scoring or confirming it, when that model is the input's (no
    int8 outside the searched sites)."""
    sites = ["a", "b", "c"]
    moves = [mixed.Move(s, "float", 1.0, 10.0, 1.0) for s in sites]
    scored: list[str] = []

    def build(enabled: set[str], dynamic: set[str]) -> str:
        return ",".join(sorted(enabled))

    def score(model: str, label: str = "") -> tuple[bool, str, float]:
        scored.append(model)
        return False, "over budget", 0.5

    plan = mixed.search(build, sites, moves, score, confirm=score, float_at_end=True)
    assert plan.met and plan.floats == ["a", "b", "c"]
    assert "" not in scored and scored == ["a,b,c", "c"]  # 0 and 2 sites float; never 3
    # int8 elsewhere (If/Loop bodies the search does not move): the last model is scored
    scored.clear()
    plan = mixed.search(build, sites, moves, score, confirm=score)
    assert not plan.met and "" in scored
    # a dynamic move at the end: that last model is not the float one, so it is scored
    moves.append(mixed.Move("c", "dynamic", 1.0, 10.0, 1.0))
    scored.clear()
    mixed.search(build, sites, moves[:2] + [moves[3]], score, float_at_end=True)
    assert "c" in scored


def test_search_stops_when_even_one_int8_site_misses_the_budget() -> None:
    """All int8 misses, and so does the model one move short of the end (the least int8
    there is): no smaller prefix is tried (more moves never hurt). When that probe meets the
    budget, one move is tried, then the search bisects between the two, never scoring every
    move made."""
    sites, moves = _float_moves(8)
    scored: list[int] = []

    def build(enabled: set[str], dynamic: set[str]) -> int:
        return 8 - len(enabled)  # float sites

    def never(model: int, label: str = "") -> tuple[bool, str, float]:
        scored.append(model)
        return False, "text changed", 0.0

    plan = mixed.search(build, sites, moves, never, float_at_end=True)
    assert plan.met and len(plan.floats) == 8 and scored == [0, 7]
    plan = mixed.search(build, sites, moves, never)  # the end is scored when not float
    assert not plan.met and scored[2:] == [0, 7, 8]

    scored.clear()

    def from_six(model: int, label: str = "") -> tuple[bool, str, float]:
        scored.append(model)
        return model >= 6, "too few float", 0.0

    plan = mixed.search(build, sites, moves, from_six)
    assert plan.met and len(plan.floats) == 6
    assert scored[:3] == [0, 7, 1] and 8 not in scored and sorted(scored[3:]) == [4, 5, 6]


def test_search_scores_no_prefix_too_float_to_be_faster() -> None:
    """Timed in turns with float, each move out of int8 costs 5 % of float's time: the
    prefixes up to 5 moves are 3 % faster than float, 6 are not. Needing 6 moves, the search
    scores all int8 and the 5-move prefix only, and ends float, saying int8 does not pay;
    needing 3, it finds 3 between 1 and 5, and reports the chosen model's ratio."""
    sites, moves = _float_moves(8)
    scored: list[int] = []
    timed: list[int] = []

    def build(enabled: set[str], dynamic: set[str]) -> int:
        return 8 - len(enabled)  # float sites

    def speed(model: int) -> tuple[float, float]:
        timed.append(model)
        return 10.0, 0.7 + 0.05 * model

    def from_(k: int):
        def score(model: int, label: str = "") -> tuple[bool, str, float]:
            scored.append(model)
            return model >= k, "text changed", 0.0

        return score

    plan = mixed.search(build, sites, moves, from_(6), float_at_end=True, speed=speed)
    assert not plan.met and len(plan.floats) == 8
    assert scored == [0, 5] and 8 not in timed  # the float model is not timed
    assert plan.reason.startswith("int8 does not pay within the budget: with 6 moves")
    assert "it stays float" in plan.reason
    scored.clear()
    plan = mixed.search(
        build,
        sites,
        moves,
        from_(3),
        float_at_end=True,
        speed=speed,
        speed_all_int8=(7.0, 0.7),
    )
    assert plan.met and len(plan.floats) == 3 and plan.speed_ratio == pytest.approx(0.85)
    assert scored[:3] == [0, 5, 1] and max(scored) == 5
    # all int8 no faster than float: nothing but float is scored after it
    scored.clear()
    plan = mixed.search(
        build, sites, moves, from_(3), float_at_end=True, speed=lambda m: (10.0, 1.0)
    )
    assert not plan.met and scored == [0] and "with every layer int8" in plan.reason


def test_a_prefix_timed_not_faster_is_timed_again() -> None:
    """One slow reading (1.00x among 0.90x) does not bound the search: a "no" is timed
    again, and the two readings' geometric mean decides."""
    sites, moves = _float_moves(4)
    readings = {3: [1.0, 0.8]}  # the top prefix, timed first

    def speed(model: int) -> tuple[float, float]:
        got = readings.get(model)
        return 10.0, got.pop(0) if got else 0.9

    plan = _search_float(sites, moves, 3, speed=speed)
    assert plan.met and len(plan.floats) == 3 and readings[3] == []


def test_prefixes_the_latency_profile_credits_with_too_little_are_not_fast_untimed() -> None:
    """The recognizer: a noisy turn read 3 of 76 layers int8 at 0.94x of float, and the
    manager verified, bisected and raced that model for 30 s to roll it back as 1.00x. With
    the profile's gains, a prefix whose int8 layers save under SPEED_MARGIN of the profiled
    float time is refused without a timing: the bound falls where the profile allows."""
    sites = [f"s{i}" for i in range(8)]
    # the moves' gains (µs) of a 100 µs float model: the last three save 0.5 µs each
    moves = [mixed.Move(s, "float", 1.0, 10.0, 30.0 if i < 5 else 0.5) for i, s in enumerate(sites)]
    timed: list[int] = []

    def speed(model: int) -> tuple[float, float]:
        timed.append(model)
        return 10.0, 0.5  # every turn reads fast: only the profile bounds the search

    plan = _search_float(sites, moves, 6, speed=speed, speed_all_int8=(5.0, 0.5), profile_us=100.0)
    # 5 moves leave 1.5 µs of 100 in int8: under 3 %, so 4 is the last fast prefix; it misses
    assert not plan.met and plan.reason.startswith("int8 does not pay within the budget")
    assert 5 not in timed and 6 not in timed and 7 not in timed
    assert mixed._profile_saving(moves, 4) == pytest.approx(31.5)
    assert mixed._profile_saving(moves, 5) == pytest.approx(1.5)


def test_the_speed_bound_is_found_galloping_down_from_the_top() -> None:
    """The moves that give back the most time come last, so the last fast prefix is near the
    top: found in one timing when the top prefix is fast, and in three when only the one below
    is (the recognizer: 23 of 25). A boundary in the middle is still found exactly."""
    sites, moves = _float_moves(24)

    def run(last_fast: int) -> tuple[list[int], mixed.Plan]:
        timed: list[int] = []

        def speed(model: int) -> tuple[float, float]:
            timed.append(model)
            return 10.0, 0.8 if model <= last_fast else 1.0

        plan = _search_float(sites, moves, last_fast, speed=speed, speed_all_int8=(8.0, 0.8))
        return timed, plan

    timed, plan = run(23)
    assert timed[0] == 23 and timed.count(23) == 1 and 24 not in timed
    timed, plan = run(22)
    assert timed[:3] == [23, 23, 22]  # a "no" is timed twice
    assert plan.met and len(plan.floats) == 22
    timed, plan = run(9)  # top, 22, 20, 16, 8, then bisection between 8 and 16
    assert plan.met and len(plan.floats) == 9 and 10 in timed and 9 in timed


def _text_metric(n: int, needed: int) -> tuple[Callable, Callable, list[int]]:
    """A task metric at 93 % until ``needed`` of ``n`` moves and 100 % from there: (build,
    score, the models scored in order); a model is its number of float sites."""
    scored: list[int] = []

    def build(enabled: set[str], dynamic: set[str]) -> int:
        return n - len(enabled)

    def score(model: int, label: str = "") -> tuple[bool, str, float]:
        scored.append(model)
        return model >= needed, "text changed", 100.0 if model >= needed else 93.0

    return build, score, scored


def test_search_stops_where_the_prefixes_left_run_at_the_same_speed() -> None:
    """The recognizer's shape: all int8 at 0.80x float, any move out of int8 costs ~9 % (one
    slow layer), further moves 0.05 % each. Needing 15 of 24 moves, the search scores all
    int8 and the 24-move bound; the fastest prefix between them that could meet the budget,
    one move (0.90x), runs within 2 % of 24 (0.91x), so it stops there, unscored: 2 models
    scored where the bisection scored 7 (and 3 while the timed bound was all int8 itself),
    and the same choice when the moves cost more."""
    sites, moves = _float_moves(24)
    build, score, scored = _text_metric(24, needed=15)

    def flat(model: int) -> tuple[float, float]:
        return 10.0, 0.8 if model == 0 else 0.9 + 0.0005 * model

    plan = mixed.search(build, sites, moves, score, speed=flat)
    assert plan.met and len(plan.floats) == 24 and scored == [0, 24]
    scored.clear()
    plan = mixed.search(build, sites, moves, score, speed=lambda m: (10.0, 0.7 + 0.01 * m))
    assert plan.met and len(plan.floats) == 15 and len(scored) > 3  # 0.01x a move: resolved


def test_search_interpolates_the_budget_between_prefixes() -> None:
    """A task metric at 93 % until 23 of 24 moves and 100 % from there, 99 % needed: with the
    target known, the search's bisection alternates with steps interpolated on the metric
    and scores 3 models between 1 and 23 where plain bisection scored 5; the same answer."""
    sites, moves = _float_moves(24)
    build, score, scored = _text_metric(24, needed=23)

    plan = mixed.search(build, sites, moves, score, float_at_end=True)
    assert len(plan.floats) == 23 and scored == [0, 23, 1, 12, 17, 20, 21, 22]
    scored.clear()
    plan = mixed.search(build, sites, moves, score, float_at_end=True, target=99.0)
    assert len(plan.floats) == 23 and scored == [0, 23, 1, 20, 21, 22]
    assert mixed._interpolate(0, 10, 90.0, 100.0, 95.0) == 5
    assert mixed._interpolate(0, 10, 90.0, 100.0, 100.0) == 9  # strictly inside
    assert mixed._interpolate(0, 10, 100.0, 90.0, 95.0) == 5  # not increasing: the middle


def test_search_offers_the_prefixes_above_its_choice_found_within_budget() -> None:
    """Needing 3 moves of 8, the search scores 0, 7, 1, then bisects to 3 through 4: the
    prefixes 4 and 7, found within budget, are its fallbacks, nearest first; the float model
    (8 moves) never is one."""
    sites, moves = _float_moves(8)
    plan = _search_float(sites, moves, 3)
    assert plan.met and len(plan.floats) == 3
    assert [len(f) for f, _ in plan.fallbacks] == [4, 7]
    assert plan.fallbacks[0] == (sites[:4], [])


def test_a_fallback_rerun_keeps_its_own_dynamic_matmuls() -> None:
    """The manager re-runs the pass with a fallback's sites: its MatMuls the search sent to
    dynamic int8 stay dynamic, though the search's choice had others; a bisection subset keeps
    the choice's."""
    calls: list[tuple[set[str], set[str]]] = []

    class FakeBuild:
        inserter = None

        def __call__(self, enabled, dynamic=frozenset()):
            calls.append((set(enabled), set(dynamic)))
            return onnx.ModelProto()

    first = static._First(FakeBuild(), ["a", "b", "c"], [], [], [], dynamic={"a"})
    first.fallback_dynamic = {frozenset({"a", "b"}): {"b"}}
    static._trial(first, PassContext(site_filter={"a", "b"}))
    static._trial(first, PassContext(site_filter={"a", "c"}))
    assert calls == [({"a", "b"}, {"b"}), ({"a", "c"}, {"a"})]


def test_speed_probe_times_a_model_in_turns_with_float() -> None:
    """The probe's float session opens at its first call; timed against itself a model reads
    a ratio near 1 (12 turns at most), and every float turn is kept for the curve's float
    point."""
    m = _model()
    feed = _feeds(1).runs[0]
    probe = mixed.SpeedProbe(m, feed, min_pairs=4, max_pairs=12, seconds=0.2)
    assert probe.ref is None and math.isnan(probe.float_ms)
    ms, ratio = probe(m)
    assert ms > 0 and 0.5 < ratio < 2.0
    assert probe.per_turn == 5  # a model of microseconds: 5 timed runs a turn
    assert 4 * 5 <= len(probe.ref_times) <= 12 * 5 and probe.float_ms > 0


def test_speed_probe_does_not_time_the_switch_between_sessions() -> None:
    """Sessions whose first run after the other one ran costs 3 ms more (the switch), the
    candidate taking half the float model's 2 ms warm: the probe reads 0.5x, where timing
    each turn's first run read (5 / 4 =) 0.8x."""
    last: list[object] = [None]

    class Fake:
        def __init__(self, ms: float) -> None:
            self.ms = ms

        def run(self, names, feed):
            extra = 3.0 if last[0] is not self else 0.0
            last[0] = self
            time.sleep((self.ms + extra) / 1000)

    probe = mixed.SpeedProbe(_model(), {}, min_pairs=4, max_pairs=4, seconds=0.0)
    probe._session = lambda m: Fake(2.0 if m == "float" else 1.0)
    probe.reference = "float"
    ms, ratio = probe("int8")
    assert probe.per_turn == 1 and ratio == pytest.approx(0.5, abs=0.1)


def test_speed_probe_reads_the_median_of_its_turns_ratios() -> None:
    """The machine slows threefold between the float run and the candidate's run of the
    fourth turn: four of the float model's seven runs are fast and four of the candidate's
    slow, so the medians over every turn read 3 ms against 2 ms (1.5x); each turn's own
    ratio but that one reads 0.5x, and the probe says 0.5x."""
    calls = [0]

    class Fake:
        def __init__(self, ms: float) -> None:
            self.ms = ms

        def run(self, names, feed):
            calls[0] += 1
            # 5 runs before the turns (float's warm-up and 3 timed, the candidate's warm-up),
            # 4 a turn (each session: one untimed, one timed); turn 3 runs float first
            slow = 3.0 if calls[0] > 5 + 3 * 4 + 2 else 1.0
            time.sleep(self.ms * slow / 1000)

    probe = mixed.SpeedProbe(_model(), {}, min_pairs=7, max_pairs=7, seconds=0.0)
    probe._session = lambda m: Fake(2.0 if m == "float" else 1.0)
    probe.reference = "float"
    ms, ratio = probe("int8")
    assert ms == pytest.approx(3.0, rel=0.3)  # the candidate's median run: a slow one
    assert ratio == pytest.approx(0.5, abs=0.1)


def test_two_readings_average_their_ms_and_their_ratios_geometrically() -> None:
    """A reading twice as fast as float and one twice as slow make 1.0x (not 1.25x)."""
    ms, ratio = mixed.two_readings((4.0, 0.5), (16.0, 2.0))
    assert ms == 10.0 and ratio == pytest.approx(1.0)
    assert mixed.two_readings((5.0, 0.9), (5.0, 0.9)) == pytest.approx((5.0, 0.9))


def test_a_reading_far_above_the_margin_is_not_timed_again() -> None:
    """A "no" within RETIME_BAND of the margin (1.00x) is timed again; one far above it
    (1.20x, the recognizer's whole placement in the slow regime) bounds the search at once."""
    assert mixed.timed_again(1.0) and not mixed.timed_again(1.0 - mixed.SPEED_MARGIN - 0.01)
    assert not mixed.timed_again(1.2)
    sites, moves = _float_moves(4)
    timed: list[int] = []

    def speed(model: int) -> tuple[float, float]:
        timed.append(model)
        return 10.0, 1.2 if model == 3 else 0.9

    plan = _search_float(sites, moves, 2, speed=speed)
    assert plan.met and timed.count(3) == 1


def test_rough_ranges_are_min_and_max_of_the_finite_values() -> None:
    """The latency profile's ranges: min and max over the runs given, Inf and NaN left out,
    a tensor with no finite value left out."""
    from onnxopt.passes.quantize.collect import collect_minmax

    text = """<ir_version: 8, opset_import: ["": 17]>
g (float[4] x) => (float[4] y, float[4] z) {
    y = Identity (x)
    z = Div (x, x)
}"""
    m = onnx.parser.parse_model(text)
    runs = [
        {"x": np.array([1.0, -2.0, np.inf, 0.5], np.float32)},
        {"x": np.full(4, 0.0, np.float32)},
    ]
    seen = collect_minmax(m, ["y", "z"], runs)
    assert seen["y"] == (-2.0, 1.0)
    assert seen["z"] == (1.0, 1.0)  # 0/0 and inf/inf are NaN: only the finite ones count


def test_no_speed_probe_for_a_model_above_the_memo_size(monkeypatch) -> None:
    """The probe holds a float session through the search: a model whose weights exceed
    MEMO_MAX_BYTES is searched without it (no bound, no latency on the curve). The profile
    is mocked to find every layer faster in int8, so the search runs."""
    from onnxopt.passes.quantize import latency

    monkeypatch.setattr(static, "MEMO_MAX_BYTES", 0)

    def refuse(*a, **k):
        raise AssertionError("no probe expected")

    def measure_all(models, feed, att, **kw):
        fl = {"mm0": 1000.0, "mm1": 1000.0, "mm3": 1000.0}
        q = {"mm0": 100.0, "mm1": 100.0, "mm3": 100.0}
        return [latency.Timing(fl, 3_000.0, 6), latency.Timing(q, 300.0, 6)]

    monkeypatch.setattr(latency, "measure_all", measure_all)
    monkeypatch.setattr(mixed.SpeedProbe, "__init__", refuse)
    m, feeds = _model(), _feeds()
    ctx = PassContext(feeds=feeds, budget=Budget(min_cosine=0.999), runner=Runner())
    res = QuantizeInt8(QuantizeConfig(calibrator="minmax", dynamic_fallback=False)).run_model(
        m, ctx
    )
    assert res.changed and [r["node"] for r in res.details["float_nodes"]] == ["mm1"]
    assert res.details["tradeoff"] and all(
        p.get("latency_ms") is None for p in res.details["tradeoff"]
    )


def test_the_profile_bound_needs_trusted_totals_and_gains_that_account_for_the_whole() -> None:
    """The bound applies where the per-layer gains credit at least the whole gain the profile
    timed (the recognizer: 17.2 ms credited, 13.7 ms whole); a layer the profile cannot
    attribute has no gain, and where the credited gains fall short (MiniLM: 4.7 against
    4.8 ms) the bound is off, as on a model too short for its profile's totals."""
    timing = {"float_us": 40_000.0, "int8_us": 27_000.0}
    sites = ["a", "b", "c"]
    full = {"a": 8_000.0, "b": 6_000.0, "c": -500.0}
    assert static._bound_us(40_000.0, full, sites, timing) == 40_000.0
    short = {"a": 8_000.0, "b": 4_000.0}  # c unattributed: 12 ms credited of 13 ms
    assert static._bound_us(40_000.0, short, sites, timing) == 0.0
    assert static._bound_us(1_500.0, full, sites, {"float_us": 1_500.0, "int8_us": 900.0}) == 0.0
    assert static._bound_us(40_000.0, full, sites, None) == 0.0
    raced = {**timing, "all_int8_raced": 0.62}  # the race kept all int8 over the profile
    assert static._bound_us(40_000.0, full, sites, raced) == 0.0


def test_a_prefix_chosen_near_the_speed_margin_is_timed_again() -> None:
    """The detector: the search chose a prefix it read at 0.97x of float, and the manager's
    race then read it 1.02x, after its confirmation and verification. A prefix found within
    budget whose reading lies within SPEED_RESOLUTION of the margin is timed again: the two
    readings' geometric mean decides, and a "no" ends the search float (the prefixes below
    miss the budget, those above are slower). A clear reading is not timed twice. (The
    latency profile puts each prefix apart, so the bisection scores 2 before it times it.)"""
    sites, moves = _float_moves(4)

    def run(chosen: list[float]) -> tuple[list[int], mixed.Plan]:
        timed: list[int] = []
        readings = {2: list(chosen)}

        def speed(model: int) -> tuple[float, float]:
            timed.append(model)
            got = readings.get(model)
            return 10.0, got.pop(0) if got else 0.8 + 0.01 * model  # each move costs 1 %

        plan = _search_float(
            sites, moves, 2, speed=speed, speed_all_int8=(8.0, 0.8), profile_us=10.0
        )
        return timed, plan

    timed, plan = run([0.965, 1.0])  # noise at the margin: not faster
    assert not plan.met and len(plan.floats) == 4 and timed.count(2) == 2
    assert plan.reason.startswith("int8 does not pay within the budget: with 2 moves")
    timed, plan = run([0.965, 0.95])  # faster on both readings
    assert plan.met and len(plan.floats) == 2 and timed.count(2) == 2
    assert plan.speed_ratio == pytest.approx((0.965 * 0.95) ** 0.5)
    timed, plan = run([0.9])  # a clear reading: timed once
    assert plan.met and timed.count(2) == 1


def test_prefixes_that_miss_the_budget_are_timed_only_when_a_decision_needs_it() -> None:
    """Each move gives back 1 % of float's time in the profile and 0.5 % timed; 11 of 16
    moves meet the budget. The prefixes the bisection scores below the one within it are not
    timed, and their points of the curve have no latency. When the bisection asks whether a
    prefix between the two could be faster beyond the probe's resolution, the fastest one
    that could meet the budget (one move above the one that misses it) is timed, unless the
    profile puts it 6 % or more away: 8 (2.5 % faster than 13: the bisection goes on), then
    11 (1 %: the answer, no, stops the search there), as when every prefix was timed (the
    PP-OCRv5 recognizer timed 5 such prefixes, ~0.9 s each, that no decision read)."""
    sites = [f"s{i}" for i in range(16)]
    moves = [mixed.Move(s, "float", 1.0, 10.0, 2.0) for s in sites]
    timed: list[int] = []

    def speed(model: int) -> tuple[float, float]:
        timed.append(model)
        return 10.0 + model, 0.5 + 0.005 * model

    plan = _search_float(sites, moves, 11, speed=speed, profile_us=200.0)
    scored = {p["float_layers"]: p["latency_ms"] for p in plan.tradeoff}
    assert plan.met and len(plan.floats) == 13  # 10 misses, and 10..13 are within 2 % timed
    assert sorted(timed) == [0, 8, 11, 12, 13]  # 0, 12 and 13 for the speed bound
    assert scored[1] is None and scored[7] is None and scored[10] is None  # never timed
    assert scored[13] == 23.0 and scored[0] == 10.0


def test_a_search_whose_least_int8_prefix_the_verification_runs_refuse_stops_there() -> None:
    """All int8 misses the budget; the last fast prefix (the fewest int8 layers the search
    would keep) meets it on the learning runs. Its model is checked on the verification runs
    first: refused, the search scores nothing below it and ends float (the recognizer: its CTC
    head, int8 in every fast prefix, changed a held-out crop); passed, the search goes on as
    before and keeps the smallest prefix within budget."""
    sites = [f"s{i}" for i in range(12)]
    moves = [mixed.Move(s, "float", 1.0, 10.0, 2.0) for s in sites]
    checked: list[int] = []

    def speed(model: int) -> tuple[float, float]:  # 12 - model int8 layers, 4 % of float each
        return 10.0, 1.0 - 0.04 * (12 - model)

    def run(verdict: str) -> tuple[mixed.Plan, list[int]]:
        scored: list[int] = []
        checked.clear()

        def score(m: int, label: str = "") -> tuple[bool, str, float]:
            scored.append(m)
            return m >= 5, "text changed", float(m)

        def precheck(m: int) -> str:
            checked.append(m)
            return verdict

        plan = mixed.search(
            lambda e, d: 12 - len(e),
            sites,
            moves,
            score,
            float_at_end=True,
            speed=speed,
            precheck=precheck,
        )
        return plan, scored

    plan, scored = run("over budget: one held-out crop read differently")
    # the last fast prefix is 11 (one int8 layer, 0.96x): checked there, refused, float
    assert checked == [11] and scored == [0, 11]
    assert not plan.met and plan.refused_at == 11 and len(plan.floats) == 12
    assert "verification runs" in plan.reason and "held-out crop" in plan.reason
    assert [p["ok"] for p in plan.tradeoff if p["float_layers"] == 11] == [False]
    plan, scored = run("")
    assert checked == [11] and plan.met and len(plan.floats) == 5 and plan.refused_at is None


def test_the_verification_runs_check_the_model_as_the_pass_would_return_it() -> None:
    """``finish`` (error feedback on the prefix's int8 layers) builds the model ``precheck``
    judges: the one the pass then returns, so the manager's verdict can be reused."""
    sites = [f"s{i}" for i in range(12)]
    moves = [mixed.Move(s, "float", 1.0, 10.0, 2.0) for s in sites]
    checked: list = []
    finished: list = []

    def finish(floats: set[str], dyn: set[str]) -> tuple[str, int]:
        finished.append((len(floats), len(dyn)))
        return ("finished", 12 - len(floats))

    plan = mixed.search(
        lambda e, d: 12 - len(e),
        sites,
        moves,
        lambda m, label="": (m >= 5, "text changed", float(m)),
        float_at_end=True,
        speed=lambda m: (10.0, 1.0 - 0.04 * (12 - m)),
        precheck=lambda m: checked.append(m) or "",
        finish=finish,
    )
    # the last fast prefix, 11 of 12 layers float: finished, then checked as finished
    assert finished == [(11, 0)] and checked == [("finished", 1)]
    assert plan.met and len(plan.floats) == 5


def test_a_search_that_found_no_placement_says_so_without_listing_every_layer() -> None:
    """A search that ends float (nothing within budget and faster, or refused on the
    verification runs) has every move in its floats: the notes say it found no placement and
    why, not "kept float" for each layer; one that found a placement lists its float layers."""
    moves = [mixed.Move(f"s{i}", "float", 1.0, 10.0, 2.0) for i in range(3)]
    plan = mixed.Plan(moves=moves, floats=["s0", "s1", "s2"], met=False, reason="why not")
    plan.evaluations = 2
    notes: list[str] = ["left float: s0: slower in int8 on this CPU"]
    static._record(plan, {}, notes)
    # first: the console shows a pass's first notes only, and the latency's can be many
    assert notes == [
        "fully quantized model misses the budget; mixed precision found no placement "
        "(2 models tried)",
        "why not",
        "left float: s0: slower in int8 on this CPU",
    ]
    plan = mixed.Plan(moves=moves, floats=["s0"], met=True)
    notes = []
    static._record(plan, {}, notes)
    assert "mixed precision: 1 float" in notes[0] and notes[1].startswith("kept float: s0")


def _floor_search(
    needed: int,
    verdict: str = "",
    n: int = 8,
    profile_us: float = 100.0,
    confirm: Callable | None = None,
    gains: list[float] | None = None,
    floor_first: bool = True,
) -> tuple[mixed.Plan, list[int], list[int], list[int]]:
    """A task-metric search with ``floor_first`` over ``n`` sites of a 100 µs float model
    whose profile credits each int8 layer with 10 µs (the floor: 7 moves, one int8 layer at
    10 µs, over SPEED_MARGIN's 3 µs) and whose timings read 4 % of float per int8 layer.
    ``gains``: the profile's µs per site instead, timed at 80 % of what it credits.
    Returns (plan, prefixes scored, timed, checked on the verification runs)."""
    sites = [f"s{i}" for i in range(n)]
    moves = [mixed.Move(s, "float", 1.0, 10.0, g) for s, g in zip(sites, gains or [10.0] * n)]
    scored: list[int] = []
    timed: list[int] = []
    checked: list[int] = []

    def score(m: int, label: str = "") -> tuple[bool, str, float]:
        scored.append(m)
        return m >= needed, "text changed", float(m)

    def speed(m: int) -> tuple[float, float]:
        timed.append(m)
        if gains is not None:
            return 10.0, 1.0 - 0.8 * mixed._profile_saving(moves, m) / profile_us
        return 10.0, 1.0 - 0.04 * (n - m)

    def precheck(m: int) -> str:
        checked.append(m)
        return verdict

    plan = mixed.search(
        lambda e, d: n - len(e),
        sites,
        moves,
        score,
        float_at_end=True,
        speed=speed,
        profile_us=profile_us,
        precheck=precheck,
        confirm=confirm,
        floor_first=floor_first,
    )
    return plan, scored, timed, checked


def test_a_task_metric_search_scores_its_floor_first_and_stops_when_it_misses() -> None:
    """The PP-OCRv5 detector: its one-layer floor changes the text of 13 % of the pages. Scored
    first, untimed, it ends the search float: the all-int8 model is not scored and nothing is
    timed (the search without it scored all int8, timed the prefixes to find the floor, and
    scored it: the same end, 3-4 s later)."""
    plan, scored, timed, checked = _floor_search(needed=8)
    assert scored == [7] and timed == [] and checked == []
    assert not plan.met and len(plan.floats) == 8 and plan.not_faster_at is None
    assert plan.floor_ended
    notes: list[str] = []
    static._record(plan, {}, notes)
    assert notes[0].startswith("the model with the fewest int8 layers the search could keep")
    assert "fewest int8 layers" in plan.reason and "text changed" in plan.reason
    assert [p["latency_ms"] for p in plan.tradeoff] == [None]
    # without floor_first, the same end after scoring all int8 and timing the top
    sites = [f"s{i}" for i in range(8)]
    timed_before: list[int] = []

    def speed(m: int) -> tuple[float, float]:
        timed_before.append(m)
        return 10.0, 1.0 - 0.04 * (8 - m)

    before = _search_float(
        sites,
        [mixed.Move(s, "float", 1.0, 10.0, 10.0) for s in sites],
        8,
        speed=speed,
        profile_us=100.0,
    )
    assert not before.met and before.evaluations == 2 and timed_before


def test_a_floor_the_verification_runs_refuse_ends_the_search_untimed() -> None:
    """Within budget on the learning runs, the floor is checked on the verification runs
    before anything else: refused there, every prefix the search could keep holds its int8
    layers, and the search ends float (the recognizer's CTC head)."""
    plan, scored, timed, checked = _floor_search(needed=5, verdict="over budget: one crop")
    assert scored == [7] and checked == [7] and timed == []
    assert not plan.met and plan.refused_at == 7 and "one crop" in plan.reason
    assert [p["ok"] for p in plan.tradeoff] == [False]


def test_a_floor_within_budget_leaves_the_search_as_it_was() -> None:
    """A floor that passes both checks: the search goes on and keeps what it kept without
    floor_first, and does not check the floor on the verification runs twice."""
    plan, scored, timed, checked = _floor_search(needed=5)
    assert scored[0] == 7 and checked == [7]
    assert plan.met and len(plan.floats) == 5
    before = _search_float(
        [f"s{i}" for i in range(8)],
        [mixed.Move(f"s{i}", "float", 1.0, 10.0, 10.0) for i in range(8)],
        5,
        speed=lambda m: (10.0, 1.0 - 0.04 * (8 - m)),
        profile_us=100.0,
    )
    assert before.floats == plan.floats


def test_a_one_site_placement_is_checked_on_the_verification_runs_first() -> None:
    """A placement of one large layer (the recognizer's CTC head alone, in the slow regime):
    all int8 is the only model the search could keep. Within budget on the learning runs, it
    is checked on the verification runs before its confirmation and error feedback; refused,
    the search ends float with a reason that says so."""
    plan, scored, timed, checked = _floor_search(needed=0, verdict="over budget: one crop", n=1)
    assert scored == [0] and checked == [0]
    assert not plan.met and plan.refused_at == 0 and "only model it could keep" in plan.reason
    plan, scored, timed, checked = _floor_search(needed=0, n=1)
    assert plan.met and checked == [0] and not plan.floats


def test_without_a_profile_bound_the_floor_is_the_prefix_with_one_int8_layer() -> None:
    """A profile whose per-layer gains do not account for its whole gain bounds nothing
    (static._bound_us): the floor is then the prefix with one int8 layer left, which every
    other prefix's int8 layers include. Missing the budget, it ends the search untimed (the
    PP-OCRv5 detector in its fast-int8 regime: 83.9 % with one layer int8)."""
    plan, scored, timed, checked = _floor_search(needed=8, profile_us=0.0)
    assert scored == [7] and timed == [] and checked == []
    assert not plan.met and "fewest int8 layers the search could keep (7 of 8" in plan.reason
    plan, scored, timed, checked = _floor_search(needed=5, profile_us=0.0)
    assert scored[0] == 7 and checked == [7] and plan.met and len(plan.floats) == 5


def test_a_steps_label_counts_the_layers_the_placement_left_float() -> None:
    """The candidates' table names a step as the trade-off curve counts it: the layers the
    latency placement left float before the search are float in every step."""
    assert mixed.step_label(set(), set()) == "all int8"
    assert mixed.step_label(set(), set(), 69) == "69 in float"
    assert mixed.step_label({"a", "b"}, {"c"}, 69) == "71 in float, 1 dynamic"


def test_a_prefix_the_verification_runs_passed_needs_no_confirmation() -> None:
    """The floor, checked on the verification runs (the manager's own verdict on the literal
    graph), and then chosen, is not confirmed on the learning runs as well; a prefix that was
    not checked there is (the recognizer at 2 points: its floor chosen, 2 s of confirmation)."""
    for needed, expected in ((7, []), (5, [5])):
        confirmed: list[int] = []

        def confirm(m: int, label: str = "", seen: list[int] = confirmed) -> tuple:
            seen.append(m)
            return True, "", float(m)

        plan, _, _, checked = _floor_search(needed=needed, confirm=confirm)
        assert plan.met and len(plan.floats) == needed and checked == [7]
        assert confirmed == expected


def test_a_floor_within_budget_scores_the_nearest_faster_prefix_next() -> None:
    """The PP-OCRv5 recognizer at 2 points: its floor (the CTC head alone int8) passes both
    checks. The prefix nearest below it that the latency profile puts 6 % of float's time
    faster (one large layer more) is scored next, and misses the budget: every prefix below
    it misses too, and the one prefix between them that could still meet the budget runs
    within the probe's resolution of the floor, so the floor is kept. All int8 is never
    scored or timed (the search without a floor scores all int8 first; on the recognizer it
    then scored one move and an interpolated prefix, and timed three models, ~7 s)."""
    gains = [10.0, 20.0, 1.0, 1.0, 1.0, 1.0, 1.0, 30.0]  # the last: the head, the floor's
    moves = [mixed.Move(f"s{i}", "float", 1.0, 10.0, g) for i, g in enumerate(gains)]
    assert mixed._profile_floor(moves, 7, 400.0) == 7 and mixed._profile_near(moves, 7, 400.0) == 1
    plan, scored, timed, checked = _floor_search(needed=6, profile_us=400.0, gains=gains)
    assert scored == [7, 1] and timed == [7, 2] and checked == [7]
    assert plan.met and len(plan.floats) == 7  # the floor kept
    before, scored, timed, _ = _floor_search(6, profile_us=400.0, gains=gains, floor_first=False)
    assert before.floats == plan.floats and scored == [0, 7, 1] and timed == [0, 7, 2]


def test_the_prefix_the_verification_runs_passed_is_offered_as_the_last_fallback() -> None:
    """The floor passed the verification runs; the search keeps a prefix with more int8
    layers, checked on the learning runs only. Among the manager's fallbacks, nearest first,
    the floor is offered last and marked verified, even beyond MAX_FALLBACKS: should the
    choice fail the manager's check and its bisection keep nothing, the manager tries it
    before rolling the pass back."""
    plan, _, _, checked = _floor_search(needed=2)  # within budget: 2, 3, 6 and the floor
    assert checked == [7] and len(plan.floats) == 2
    assert [len(f) for f, _ in plan.fallbacks] == [3, 6, 7] and plan.verified_fallback == 2
    plan, _, _, _ = _floor_search(needed=5)  # the floor among the two nearest
    assert [len(f) for f, _ in plan.fallbacks] == [6, 7] and plan.verified_fallback == 1
    plan, _, _, checked = _floor_search(needed=7)  # the floor itself chosen: nothing to add
    assert len(plan.floats) == 7 and plan.verified_fallback is None and not plan.fallbacks


def test_a_prefix_below_the_checked_floor_no_faster_than_it_gives_way_to_the_floor() -> None:
    """The floor (one int8 layer of 8) met the budget and passed the verification runs; the
    prefix the profile puts 6 % faster met it too, and the search went on to the fewest
    float layers within budget (3 int8). Timed no faster than the floor beyond what the
    probe resolves (2 %), that prefix gives way to the floor; 2 % faster or more, it stays."""
    n, sites = 8, [f"s{i}" for i in range(8)]
    moves = [mixed.Move(s, "float", 1.0, 10.0, 10.0) for s in sites]

    def run(at_five: float) -> mixed.Plan:
        ratios = {7: 0.90, 5: at_five}

        return mixed.search(
            lambda e, d: n - len(e),
            sites,
            moves,
            lambda m, label="": (m >= 5, "text changed", float(m)),
            float_at_end=True,
            speed=lambda m: (10.0, ratios.get(m, 0.80)),
            profile_us=100.0,
            precheck=lambda m: "",
            floor_first=True,
        )

    plan = run(0.89)
    assert len(plan.floats) == 7 and plan.speed_ratio == 0.90
    assert [p["float_layers"] for p in plan.tradeoff if p.get("chosen")] == [7]
    plan = run(0.87)
    assert len(plan.floats) == 5 and plan.speed_ratio == 0.87
