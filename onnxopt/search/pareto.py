"""Pareto fronts over (quality ↑, latency ↓, size ↓) and the choice of one model.

The choice: among the points that meet the budget and the constraints, ``fastest`` takes the
most accurate of those within :data:`LATENCY_TIE` of the lowest latency, ``smallest`` the
smallest, ``accurate`` the most accurate (ties: the faster).

``a`` dominates ``b`` when it is no worse in every objective and better in one:
``q_a >= q_b, t_a <= t_b, s_a <= s_b`` with one inequality strict. The front is the set of
points no other point dominates; non-dominated sorting peels fronts off one after another
(rank 0 is the front).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Point = dict[str, Any]


def _objectives(p: Point) -> tuple[float, float, float]:
    q = p.get("quality")
    return (float("-inf") if q is None else q, p["latency_ms"], p["size_mb"])


def dominates(a: Point, b: Point) -> bool:
    qa, ta, sa = _objectives(a)
    qb, tb, sb = _objectives(b)
    return qa >= qb and ta <= tb and sa <= sb and (qa > qb or ta < tb or sa < sb)


def front(points: Sequence[Point]) -> list[Point]:
    """The points no other point dominates (input order kept)."""
    return [p for p in points if not any(dominates(q, p) for q in points if q is not p)]


def ranks(points: Sequence[Point]) -> list[int]:
    """Non-dominated sorting: each point's front index (0: on the Pareto front)."""
    left = list(range(len(points)))
    out = [0] * len(points)
    r = 0
    while left:
        sub = [points[i] for i in left]
        top = {id(p) for p in front(sub)}
        for i in left:
            if id(points[i]) in top:
                out[i] = r
        left = [i for i in left if id(points[i]) not in top]
        r += 1
    return out


@dataclass(frozen=True)
class Constraints:
    """What a chosen model must meet besides the budget (None: no limit)."""

    max_latency_ms: float | None = None
    max_size_mb: float | None = None

    def check(self, p: Point) -> str:
        """Why ``p`` does not qualify ('' when it does)."""
        if not p.get("feasible"):
            return p.get("why") or "over budget"
        if self.max_latency_ms is not None and p["latency_ms"] > self.max_latency_ms:
            return f"latency {p['latency_ms']:.3g} ms > {self.max_latency_ms:g} ms"
        if self.max_size_mb is not None and p["size_mb"] > self.max_size_mb:
            return f"size {p['size_mb']:.3g} MB > {self.max_size_mb:g} MB"
        return ""


def _sort_key(objective: str) -> Callable[[Point], tuple[float, ...]]:
    def key(p: Point) -> tuple[float, ...]:
        q, t, s = _objectives(p)
        if objective == "smallest":
            return (s, t, -q)
        return (-q, t, s)  # accurate

    return key


#: latencies within this fraction of the fastest are a tie (closer timings are noise on a
#: shared machine); ``fastest`` then takes the most accurate of them
LATENCY_TIE = 0.05


def choose(points: Sequence[Point], constraints: Constraints, objective: str) -> Point | None:
    """The best point by ``objective`` among those that meet every constraint. ``fastest``:
    among the points within :data:`LATENCY_TIE` of the lowest latency, and with at most
    :data:`LATENCY_TIE` more multiply-accumulates than the fastest one, the most accurate
    (then the smallest, then the fastest).

    The MACs are counted, not timed: a point with twice the fastest one's MACs timed within
    5 % of it is more often timing noise than a tie (the digits search's models run in
    0.03-0.06 ms, where one session's speed depends on where its worker thread lands; a
    search chose prune 0.3 over prune 0.5 for its accuracy, timed within 5 %, and raced 1.21x
    slower than the hand-tuned model). Points without a MAC count are compared on latency
    alone."""
    good = [p for p in points if not constraints.check(p)]
    if not good:
        return None
    if objective == "fastest":
        fastest = min(good, key=lambda p: (p["latency_ms"], _macs(p) or 0))
        t, macs = fastest["latency_ms"], _macs(fastest)
        good = [
            p
            for p in good
            if p["latency_ms"] <= t * (1 + LATENCY_TIE)
            and (macs is None or _macs(p) is None or _macs(p) <= macs * (1 + LATENCY_TIE))
        ]
        return min(good, key=lambda p: (-_objectives(p)[0], p["size_mb"], p["latency_ms"]))
    return min(good, key=_sort_key(objective))


def _macs(p: Point) -> float | None:
    m = p.get("macs")
    return float(m) if m else None


def promote(points: Sequence[Point], k: int, constraints: Constraints) -> list[Point]:
    """The ``k`` most promising cheap results: those that meet the constraints first, then by
    front rank, then by latency."""
    r = ranks(points)
    order = sorted(
        range(len(points)),
        key=lambda i: (bool(constraints.check(points[i])), r[i], points[i]["latency_ms"]),
    )
    return [points[i] for i in order[:k]]
