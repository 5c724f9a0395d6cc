"""When a latency race stops (onnxopt.timing._settled): the sign test and the decisive stop."""

from __future__ import annotations

from onnxopt.timing import Race, _settled


def _times(a_ms: float, b_ms: float, n: int) -> dict[int, list[float]]:
    return {0: [a_ms] * n, 1: [b_ms] * n}


def test_a_decided_race_stops_at_its_minimum_rounds() -> None:
    # b won all 10 rounds at 0.6x: decided after 0.1 s of a 2 s race
    assert _settled(_times(1.0, 0.6, 10), 10, 10, 10, 2.0, 0.1)
    # a won them all, b 1.5x slower: decided too
    assert _settled(_times(1.0, 1.5, 10), 10, 0, 10, 2.0, 0.1)
    assert Race(1.0, 0.6, 10, 10, 2).b_faster and Race(1.0, 0.6, 10, 10, 2).p_value < 0.001


def test_a_close_or_split_race_runs_its_time() -> None:
    assert not _settled(_times(1.0, 0.95, 10), 10, 10, 10, 2.0, 0.1)  # within 10 %
    assert not _settled(_times(1.0, 0.6, 10), 10, 9, 10, 2.0, 0.1)  # one round lost
    assert _settled(_times(1.0, 0.6, 13), 13, 12, 10, 2.0, 0.1)  # ... of 13: p = 0.0017
    assert not _settled(_times(1.0, 0.6, 9), 9, 9, 10, 2.0, 0.1)  # under the minimum
    assert _settled(_times(1.0, 0.95, 10), 10, 5, 10, 2.0, 2.1)  # time up, no lead
    # b ahead but the sign test unsure: goes on up to three times the time
    assert not _settled(_times(1.0, 0.95, 12), 12, 8, 10, 2.0, 2.1)
    assert _settled(_times(1.0, 0.95, 12), 12, 8, 10, 2.0, 6.1)
