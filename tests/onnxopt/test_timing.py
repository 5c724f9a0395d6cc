"""When a latency race stops (onnxopt.timing._settled): the sign test and the decisive stop; its
sessions do not spin."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.timing import Race, _settled


def _times(a_ms: float, b_ms: float, n: int) -> dict[int, list[float]]:
    return {0: [a_ms] * n, 1: [b_ms] * n}


def test_a_decided_race_stops_at_its_minimum_rounds() -> None:
    # b won all 10 rounds at 0.6x: decided after 0.1 s of a 2 s race
    assert _settled(_times(1.0, 0.6, 10), 10, 10, 10, 2.0, 0.1)
    # a won them all, b 1.5x slower: decided too
    assert _settled(_times(1.0, 1.5, 10), 10, 0, 10, 2.0, 0.1)
    assert Race(1.0, 0.6, 10, 10, 2).b_faster and Race(1.0, 0.6, 10, 10, 2).p_value < 0.001


def test_a_lopsided_race_stops_after_six_rounds() -> None:
    # every round won and 25 % or more apart: decided at 6 rounds (p = 0.016), either way
    assert _settled(_times(1.0, 0.6, 6), 6, 6, 10, 2.0, 0.1)
    assert _settled(_times(1.0, 1.5, 6), 6, 0, 10, 2.0, 0.1)
    assert Race(1.0, 0.6, 6, 6, 2).b_faster
    assert Race(1.0, 0.6, 6, 6, 2).reversed() == Race(0.6, 1.0, 6, 0, 2)
    assert not _settled(_times(1.0, 0.6, 5), 5, 5, 10, 2.0, 0.1)  # under six rounds
    assert not _settled(_times(1.0, 0.8, 9), 9, 9, 10, 2.0, 0.1)  # within 25 %: ten rounds
    assert not _settled(_times(1.0, 0.6, 9), 9, 8, 10, 2.0, 0.1)  # one round lost


def test_a_close_or_split_race_runs_its_time() -> None:
    assert not _settled(_times(1.0, 0.95, 10), 10, 10, 10, 2.0, 0.1)  # within 10 %
    assert not _settled(_times(1.0, 0.6, 10), 10, 9, 10, 2.0, 0.1)  # one round lost
    assert _settled(_times(1.0, 0.6, 13), 13, 12, 10, 2.0, 0.1)  # ... of 13: p = 0.0017
    assert not _settled(_times(1.0, 0.8, 9), 9, 9, 10, 2.0, 0.1)  # under the minimum
    assert _settled(_times(1.0, 0.95, 10), 10, 5, 10, 2.0, 2.1)  # time up, no lead
    # b ahead but the sign test unsure: goes on up to three times the time
    assert not _settled(_times(1.0, 0.95, 12), 12, 8, 10, 2.0, 2.1)
    assert _settled(_times(1.0, 0.95, 12), 12, 8, 10, 2.0, 6.1)


def test_race_sessions_do_not_spin_their_idle_threads(monkeypatch) -> None:
    """Two sessions alive at once, run in turns: neither's workers may spin after a run (they
    would compete with the other's runs); other timing sessions keep onnxruntime's default."""

    from onnxopt import timing
    from tests.helpers import parse

    built: list = []
    real = timing.session_options
    monkeypatch.setattr(
        timing, "session_options", lambda *a, **k: built.append(real(*a, **k)) or built[-1]
    )
    m: onnx.ModelProto = parse(
        '<ir_version: 8, opset_import: ["": 17]>\ng (float[1,4] x) => (float[1,4] y) { y = Relu(x) }'
    )
    feed = {"x": np.ones((1, 4), np.float32)}
    timing.race(m, m, feed, seconds=0.01, min_rounds=2, max_rounds=2)
    assert len(built) == 2
    assert all(so.get_session_config_entry("session.force_spinning_stop") == "1" for so in built)
    built.clear()
    timing.quick_latency(m, feed, seconds=0.01)
    with pytest.raises(RuntimeError):  # no entry: onnxruntime's default (spinning)
        built[0].get_session_config_entry("session.force_spinning_stop")


def test_a_race_of_slow_models_times_fewer_runs_a_round(monkeypatch) -> None:
    """A warm run of 20 ms or more: 2 timed runs a round (after the untimed one); faster
    models keep 5; a caller's ``per_round`` wins."""

    from onnxopt import timing
    from tests.helpers import parse

    m: onnx.ModelProto = parse(
        '<ir_version: 8, opset_import: ["": 17]>\ng (float[1,4] x) => (float[1,4] y) { y = Relu(x) }'
    )
    feed = {"x": np.ones((1, 4), np.float32)}
    for ms, per_round, want in ((25.0, None, 2), (5.0, None, 5), (25.0, 4, 4)):
        asked: list[int] = []

        def fake(sess, feed, n, ms=ms, asked=asked):
            asked.append(n)
            return [ms] * n

        monkeypatch.setattr(timing, "_timed_runs", fake)
        timing.race(m, m, feed, seconds=0.0, min_rounds=2, max_rounds=2, per_round=per_round)
        assert asked[:2] == [1, 1]  # one timed warm run of each model
        assert asked[2:] == [want] * 4  # 2 rounds, both models


def test_the_ratio_is_the_median_of_the_rounds_ratios() -> None:
    """A change of the machine's speed within a race moves the pooled medians, not the rounds'
    ratios: each round's two models run next to each other."""
    r = Race(20.0, 13.0, 6, 6, 2, round_ratio=0.88)  # pooled medians between two modes: 0.65
    assert r.ratio == 0.88 and r.b_faster
    assert r.reversed().ratio == pytest.approx(1 / 0.88)
    assert r.reversed().reversed().ratio == pytest.approx(r.ratio)
    assert Race(20.0, 13.0, 6, 6, 2).ratio == 0.65  # without the rounds: the pooled medians
    # the stop reads the rounds' ratio: 0.88 is not 25 % away, whatever the pooled medians say
    assert _settled(_times(20.0, 13.0, 6), 6, 6, 10, 2.0, 0.1)
    assert not _settled(_times(20.0, 13.0, 6), 6, 6, 10, 2.0, 0.1, ratios=[0.88] * 6)


def test_a_caller_with_a_threshold_of_its_own_stops_once_clear_of_it() -> None:
    # six rounds won at 0.88x: not decided for the generic stop (25 %), decided at 8 %
    assert not _settled(_times(1.0, 0.88, 6), 6, 6, 10, 2.0, 0.1)
    assert _settled(_times(1.0, 0.88, 6), 6, 6, 10, 2.0, 0.1, early_decisive=0.92)
    assert not _settled(_times(1.0, 0.93, 6), 6, 6, 10, 2.0, 0.1, early_decisive=0.92)
    assert not _settled(_times(1.0, 0.88, 6), 6, 5, 10, 2.0, 0.1, early_decisive=0.92)


def test_a_race_turns_to_fewer_runs_a_round_when_the_machine_slows(monkeypatch) -> None:
    """Warm runs under SLOW_RUN_MS pick 5 timed runs a round; from the first round whose runs
    take longer, 2 (a slow model needs fewer runs a round, and 5 made each round long)."""
    import onnx
    from onnx import TensorProto, helper

    from onnxopt import timing

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(model)
    asked: list[int] = []

    def fake(sess, feed, n):  # 10 ms for the warm-up, then the machine slows to 25 ms
        asked.append(n)
        return [10.0 if len(asked) <= 2 else 25.0] * n

    monkeypatch.setattr(timing, "_timed_runs", fake)
    feed = {"x": np.ones((1, 4), np.float32)}
    r = timing.race(model, model, feed, seconds=0.0, min_rounds=4, max_rounds=4)
    assert asked == [1, 1, 5, 5, 2, 2, 2, 2, 2, 2]
    assert r.rounds == 4 and r.ratio == 1.0


def _relu_model() -> onnx.ModelProto:
    from tests.helpers import parse

    return parse(
        '<ir_version: 8, opset_import: ["": 17]>\ng (float[1,4] x) => (float[1,4] y) { y = Relu(x) }'
    )


def test_a_race_counts_the_rounds_timed_before_it_and_times_three_of_its_own(monkeypatch):
    """``prior``: rounds a pass timed already count as the race's (its wins, its ratio, its
    stop); the race still times PRIOR_OWN_ROUNDS rounds itself."""
    from onnxopt import timing

    m = _relu_model()
    feed = {"x": np.ones((1, 4), np.float32)}
    runs = {"n": 0}

    def fake(sess, feed, n):
        runs["n"] += 1
        # the models alternate within a round; b (the second session made) is 0.88x a
        return [0.88 if sess is made[1] else 1.0] * n

    made: list = []
    real = timing.model_session
    monkeypatch.setattr(
        timing, "model_session", lambda *a, **k: made.append(real(*a, **k)) or made[-1]
    )
    monkeypatch.setattr(timing, "_timed_runs", fake)
    # six of the pass's turns won at 0.88x: ten rounds won decide it, four of them its own
    r = timing.race(m, m, feed, prior=[0.88] * 6)
    assert (r.rounds, r.prior_rounds, r.b_wins) == (10, 6, 10) and r.b_faster
    assert "6 of them the pass's own" in r.describe()
    # a decided prior still leaves three rounds of the race's own
    made.clear()
    r = timing.race(m, m, feed, prior=[0.5] * 10)
    assert (r.rounds, r.prior_rounds) == (10 + timing.PRIOR_OWN_ROUNDS, 10)
    # without: the race alone (ten rounds at 0.88x)
    made.clear()
    r = timing.race(m, m, feed)
    assert (r.rounds, r.prior_rounds) == (10, 0) and "pass's own" not in r.describe()


def test_the_structure_digest_reads_the_graph_not_the_weights_values():
    from onnx import helper, numpy_helper

    from onnxopt.timing import structure_digest

    def mm(w: np.ndarray, op: str = "MatMul") -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
        node = helper.make_node(op, ["x", "w"], ["y"], name="n")
        g = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(w, "w")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    a = mm(np.ones((4, 4), np.float32))
    b = mm(np.full((4, 4), 2.0, np.float32))  # other weights
    tagged = mm(np.ones((4, 4), np.float32))
    entry = tagged.graph.node[0].metadata_props.add()
    entry.key, entry.value = "onnxopt.from", '["n"]'  # provenance only
    assert structure_digest(a) == structure_digest(b) == structure_digest(tagged)
    assert structure_digest(a) != structure_digest(mm(np.ones((4, 4), np.float32), "Add"))
    assert structure_digest(a) != structure_digest(mm(np.ones((4, 1), np.float32)))  # a shape
