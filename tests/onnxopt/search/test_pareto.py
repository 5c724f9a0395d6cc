"""Pareto dominance, fronts, non-dominated ranks, the choice and the promotion."""

from __future__ import annotations

from onnxopt.search.pareto import Constraints, choose, dominates, front, promote, ranks


def _p(name, q, t, s, feasible=True):
    return {"id": name, "quality": q, "latency_ms": t, "size_mb": s, "feasible": feasible}


A, B, C, D = (
    _p("a", 99, 1.0, 1.0),
    _p("b", 98, 0.5, 1.0),
    _p("c", 97, 0.6, 1.0),
    _p("d", 90, 0.2, 0.1, False),
)


def test_dominance_and_front():
    assert dominates(B, C) and not dominates(C, B)
    assert not dominates(A, B) and not dominates(B, A)
    assert not dominates(A, A)
    assert front([A, B, C, D]) == [A, B, D]
    assert ranks([A, B, C, D]) == [0, 0, 1, 0]


def test_choice_honours_budget_constraints_and_objective():
    pts = [A, B, C, D]
    assert choose(pts, Constraints(), "fastest") is B  # D is over budget
    assert choose(pts, Constraints(), "accurate") is A
    assert choose(pts, Constraints(max_latency_ms=0.4), "fastest") is None
    assert choose(pts, Constraints(max_size_mb=0.5), "fastest") is None
    assert Constraints(max_latency_ms=0.8).check(A).startswith("latency 1 ms")


def test_fastest_breaks_latency_ties_within_noise_by_quality():
    fast, close, slow = _p("f", 97, 1.00, 1.0), _p("c", 98, 1.04, 2.0), _p("s", 99, 1.2, 1.0)
    assert choose([fast, close, slow], Constraints(), "fastest") is close  # 4 % is noise
    assert choose([fast, slow], Constraints(), "fastest") is fast
    assert choose([fast, close, slow], Constraints(), "smallest") is fast


def test_fastest_takes_no_point_with_more_macs_as_a_latency_tie():
    # timed within 5 % of the fastest, but with twice its MACs: noise, not a tie
    fast = {**_p("f", 97, 1.00, 1.0), "macs": 1_000_000}
    wider = {**_p("w", 99, 1.04, 1.0), "macs": 2_000_000}
    same = {**_p("s", 98, 1.03, 1.0), "macs": 1_020_000}  # another precision, same MACs
    assert choose([fast, wider], Constraints(), "fastest") is fast
    assert choose([fast, wider, same], Constraints(), "fastest") is same
    untold = {k: v for k, v in wider.items() if k != "macs"}
    assert choose([fast, untold], Constraints(), "fastest") is untold  # latency alone
    assert choose([fast, wider], Constraints(), "accurate") is wider


def test_promotion_prefers_feasible_then_front_then_speed():
    assert [p["id"] for p in promote([A, B, C, D], 2, Constraints())] == ["b", "a"]
    assert [p["id"] for p in promote([A, B, C, D], 4, Constraints())][-1] == "d"
