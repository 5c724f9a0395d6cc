"""Mixed precision: which layers leave int8 when the whole model misses the budget.

Each site ``k`` has a sensitivity, its SQNR with only it quantized (:mod:`.sensitivity`), and a
measured latency gain ``g_k = t_float − t_int8`` (µs, :mod:`.latency`). A *move* takes one site
out of static int8: to dynamic int8 (a MatMul whose dynamic SQNR beats its static one by
``DYNAMIC_MARGIN_DB``: the runtime range suits its activations better) or to float. Moves are
ordered by what they buy per microsecond given back:

    ``priority_k = (10^(−SQNR_k/10) − 10^(−SQNR'_k/10)) / max(cost_k, floor)``

(``SQNR'`` after the move: ∞ in float; ``cost_k = g_k`` to float, ``g_k/2`` to dynamic, an
estimate; ``floor`` = 0.1 % of the model's time, so free moves do not divide by zero). The
smallest prefix of the ordered moves whose model meets the budget is searched by doubling
then bisection, assuming more moves never hurt (when all int8 misses the budget, the prefix
one move short of the end is tried first: if it misses too, nothing but float is left; if not,
one move, then bisection between them); a site moved to dynamic may later move to
float. Every model evaluated becomes a point of the accuracy/latency trade-off curve in the
report (``details["tradeoff"]``), timed in turns with the float model (:class:`SpeedProbe`,
ORT_ENABLE_ALL, 2 threads) when within budget (all int8 within budget at once is not: the
manager's race times it) or when the search needs its time; the others' latency is None.
Those timings also bound the search: no prefix is scored
that is not :data:`SPEED_MARGIN` faster than float, since the manager would roll it back as
not faster, and the bisection stops once the prefixes left between one that misses the budget
and one within it cannot differ in speed by more than :data:`SPEED_RESOLUTION`.

With a task metric as the budget, each score runs the user's callable, and the search scores
its floor first, untimed: the prefix with the fewest int8 layers it could keep. Missing the
budget there, no prefix with more int8 layers can meet it, and the search ends float
(``floor_first``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxopt import phases

from .sensitivity import SiteStats

logger = logging.getLogger(__name__)

DYNAMIC_MARGIN_DB = 3.0
#: a prefix the search scores must run at most ``1 - SPEED_MARGIN`` of the float model's time
#: (:class:`SpeedProbe`): the manager's race then needs it faster beyond noise (ratio < 0.99
#: and a sign test), and a model in that band rarely passes it
SPEED_MARGIN = 0.03
#: the bisection stops when the prefix known within budget runs within this fraction of the
#: float model's time of the prefix known to miss it: every prefix between them runs between
#: the two, so the best a further task-metric run could buy is less than the probe resolves
#: (on PP-OCRv5's recognizer: 1 move at 0.91x, 19 at 0.91x, where the search went on to
#: score 5 more models, ~3 s each, for a choice at the same speed)
SPEED_RESOLUTION = 0.02
#: a prefix that misses the budget is timed only when the latency profile puts it within this
#: fraction of the float model's time of the prefix within it (:func:`search`'s ``worth``):
#: farther apart, the timing could not stop the bisection. On the PP-OCRv5 recognizer the
#: profile's gaps between such prefixes were 1.2-1.4x the timed ones (0.066 for 0.050, 0.096
#: for 0.071, 0.33 for 0.26), so 3x the resolution is timed
PROFILE_APART = 3 * SPEED_RESOLUTION
#: a model whose float run takes less (ms) is timed several runs a turn by :class:`SpeedProbe`
SHORT_MS = 1.0
#: a probe reading "not faster" is timed again (:func:`timed_again`) only when it lies within
#: this much above the margin (a reading below ``1 - SPEED_MARGIN + RETIME_BAND``): the noisy
#: turn that read 1.00x among 0.90-0.95x neighbours on the PP-OCRv5 recognizer is timed again,
#: while its whole placement read at 1.13x and 1.14x of float (and a core of its layers twice
#: more) cost ~1.4 s a reading to say the same thing twice
RETIME_BAND = 0.10
#: prefixes found within budget above the chosen one, offered to the manager in case the
#: chosen one fails its check on other data
MAX_FALLBACKS = 2


@dataclass(frozen=True)
class Move:
    site: str
    to: str  # "float" | "dynamic"
    priority: float
    sqnr_db: float
    gain_us: float


@dataclass
class Plan:
    """The outcome: which sites leave static int8, and the curve on the way."""

    floats: list[str] = field(default_factory=list)
    dynamic: list[str] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    tradeoff: list[dict] = field(default_factory=list)
    met: bool = True
    reason: str = ""
    evaluations: int = 0
    #: the chosen prefix's time over the float model's (with a speed probe), else None
    speed_ratio: float | None = None
    #: (floats, dynamic) of the prefixes above the chosen one found within budget, nearest
    #: first (at most :data:`MAX_FALLBACKS`)
    fallbacks: list[tuple[list[str], list[str]]] = field(default_factory=list)
    #: the prefix (moves made) at which the search stopped as not faster than float, else None
    not_faster_at: int | None = None
    #: the prefix whose model the verification runs refused before the bisection, else None
    refused_at: int | None = None
    #: whether the floor, scored first (``search``'s ``floor_first``), ended the search
    floor_ended: bool = False
    #: the index in ``fallbacks`` of the prefix the verification runs passed (``precheck``),
    #: offered last whatever :data:`MAX_FALLBACKS`, else None
    verified_fallback: int | None = None


def order_moves(
    sites: list[str],
    stats: dict[str, SiteStats],
    gains: dict[str, float],
    *,
    total_us: float,
    corrected: set[str],
    dynamic: bool,
) -> list[Move]:
    """Moves in the order the planner tries them (module docstring)."""
    floor = max(0.5, 1e-3 * total_us)
    first, later = [], []
    for s in sites:
        st = stats.get(s)
        sq = st.sqnr(s in corrected) if st is not None else 0.0
        nf = _noise(sq)
        gain = max(gains.get(s, 0.0), 0.0)
        sd = st.sqnr_dynamic if (st is not None and dynamic) else None
        if sd is not None and sd >= sq + DYNAMIC_MARGIN_DB:
            first.append(Move(s, "dynamic", (nf - _noise(sd)) / max(gain / 2, floor), sq, gain))
            later.append(Move(s, "float", _noise(sd) / max(gain / 2, floor), sd, gain))
        else:
            first.append(Move(s, "float", nf / max(gain, floor), sq, gain))
    first.sort(key=lambda m: (-m.priority, m.site))
    later.sort(key=lambda m: (-m.priority, m.site))
    return first + later


def _noise(sqnr_db: float) -> float:
    if sqnr_db == math.inf:
        return 0.0
    return 10.0 ** (-sqnr_db / 10.0) if sqnr_db > -300 else 1.0


def apply(moves: list[Move]) -> tuple[set[str], set[str]]:
    """(float sites, dynamic sites) after ``moves``."""
    floats = {m.site for m in moves if m.to == "float"}
    dyn = {m.site for m in moves if m.to == "dynamic"} - floats
    return floats, dyn


#: (model, label) -> (within budget, why not, headline number)
Score = Callable[[onnx.ModelProto, str], tuple[bool, str, float]]
Build = Callable[[set[str], set[str]], onnx.ModelProto]


def step_label(
    floats: set[str] | list[str], dynamic: set[str] | list[str], already: int = 0
) -> str:
    """How a step of the search reads in the report: "all int8", "3 in float, 1 dynamic".
    ``already``: the layers the latency placement left float before the search, counted in,
    as the trade-off curve counts them (the PP-OCRv5 detector's floor read "41 in float" in
    the candidates' table and "110 float" on the curve above it)."""
    parts = [f"{len(floats) + already} in float"] if floats or already else []
    parts += [f"{len(dynamic)} dynamic"] if dynamic else []
    return ", ".join(parts) or "all int8"


def search(
    build: Build,
    sites: list[str],
    moves: list[Move],
    score: Score,
    *,
    already_float: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    confirm: Score | None = None,
    float_at_end: bool = False,
    speed: Callable[[onnx.ModelProto], tuple[float, float]] | None = None,
    speed_all_int8: tuple[float, float] | None = None,
    target: float | None = None,
    profile_us: float = 0.0,
    precheck: Callable[[onnx.ModelProto], str] | None = None,
    floor_first: bool = False,
    finish: Callable[[set[str], set[str]], onnx.ModelProto] | None = None,
) -> Plan:
    """Smallest prefix of ``moves`` whose model meets the budget (``score``'s verdict).

    With ``confirm`` (a second, costlier verdict: the literal Q/DQ graph where ``score`` ran
    the deployed one), the prefix found is confirmed; if it fails, the search goes on above
    it, galloping then bisecting again, each prefix now scored with ``confirm`` alone.
    ``float_at_end``: ``build`` quantizes nothing but ``sites`` (no int8 elsewhere, such as
    If/Loop bodies), so every site out of int8 is the input model itself.

    ``speed`` (a model -> (ms, time / the float model's time), :class:`SpeedProbe`) bounds
    the search when all int8 misses the budget: the prefixes are timed first, which costs a
    fraction of a task-metric run, and the largest one at least :data:`SPEED_MARGIN` faster
    than float is found galloping down from the top (:func:`_last_fast`); no larger prefix
    is scored (it would be rolled back as not faster), and when that one misses the budget,
    nothing is left but float (the PP-OCRv5 detector: 2 task-metric runs where its search
    scored 9 models, and the manager then rolled the one it chose back as 1.00x). Its
    timings are the trade-off curve's latencies (none without it, none for all int8 found
    within budget at once, which ends the search, and none for a prefix that misses the
    budget where no decision needed its time); ``speed_all_int8``: the all-int8
    model's, when already timed. ``profile_us``: the float model's time in the latency
    profile whose per-layer gains the moves carry (0: none trusted). A prefix whose int8
    layers the profile credits with less than :data:`SPEED_MARGIN` of that time is not fast,
    untimed: timing it only lets a noisy turn pass it (PP-OCRv5's recognizer, 3 of 76 layers
    int8 at "0.94x", where the manager verified it, bisected it and its race read 1.00x: 30 s).

    ``target``: the headline number the budget needs (a task metric's floor, an accuracy's,
    the minimum cosine). Bisection steps then alternate with steps that interpolate it
    between the two prefixes' numbers: a task-metric budget puts the boundary near the top
    (PP-OCRv5's recognizer: 93 % at 1 move, 100 % at 23 of 24, 99 % needed), where plain
    bisection from the middle scored 5 models to get there.

    ``precheck`` (the manager's verdict on the verification runs: "" within the budget, else
    why not; :attr:`onnxopt.contract.PassContext.precheck`): when all int8 misses the budget
    and the prefix with the fewest int8 layers the search would keep (the last fast one, else
    the one short of the end) meets it on the learning runs, fast enough, with prefixes left
    below it to search, that prefix is checked there first. Refused, nothing below it can
    pass (more moves never hurt) and the search stops: float. On the PP-OCRv5 recognizer at a
    1-point budget, whose CTC head (int8 in every fast prefix) changes one held-out crop in 66,
    the search bisected 5-6 more models, the manager refused its choice and then that prefix,
    its fallback: ~20 s for the same outcome. The verdict only ever stops the search: the model
    the search keeps is verified by the manager as before. ``finish`` (a prefix's floats and
    dynamic sites -> the model the pass would return for it: error feedback on its int8
    layers) builds the model ``precheck`` judges, else the prefix's model as scored is.

    ``floor_first`` (a task-metric budget, whose every score runs the user's callable): the
    first model scored is the floor, untimed: the prefix with the fewest int8 layers the
    profile credits with :data:`SPEED_MARGIN` of float's time (:func:`_profile_floor`), with
    ``speed`` and a profile bound (``profile_us``), else the one with a single int8 layer
    left. Every prefix the search could keep has its int8 layers and more, so when it misses
    the budget, or ``precheck`` refuses it, the search ends float there (more moves never
    hurt): on the PP-OCRv5 detector, its all-int8 model and the timings that found the floor
    are not run. Within budget and timed fast, the floor is followed by the prefix nearest
    below it that the profile puts :data:`PROFILE_APART` faster (:func:`_profile_near`).
    Missing the budget, that prefix bounds the search from below, and only the prefixes
    between the two are bisected (``worth`` first times the fastest of them). Within it, the
    search goes on as above, its verdict kept."""
    out = Plan(moves=moves)
    n = len(moves)
    cache: dict[int, bool] = {}
    times: dict[int, tuple[float, float]] = {}  # prefix -> (ms, ratio to float)
    heads: dict[int, float] = {}  # prefix -> the budget's headline number
    if speed_all_int8 is not None:  # the caller timed the all-int8 model already
        times[0] = speed_all_int8
    floats_n, dyn_n = apply(moves)
    # every move made, the model is the float one: within budget by definition, not run (on
    # the PP-OCRv5 detector it and its confirmation cost two task-metric runs, 7 s)
    all_float = float_at_end and not dyn_n and set(sites) <= floats_n
    if all_float:
        cache[n] = True

    #: the latest prefix found within budget and its model, for its confirmation
    last_good: dict[int, onnx.ModelProto] = {}

    built: dict[int, onnx.ModelProto] = {}  # the last model built (timed, then scored)

    def model_at(k: int) -> tuple[onnx.ModelProto, str, set[str], set[str]]:
        floats, dyn = apply(moves[:k])
        if k in last_good:
            model = last_good[k]
        elif k in built:
            model = built[k]
        else:
            model = build({s for s in sites if s not in floats}, dyn)
            built.clear()
            built[k] = model
        return model, step_label(floats, dyn, already_float), floats, dyn

    def time_once(k: int) -> tuple[float, float]:
        try:
            return speed(model_at(k)[0])
        except Exception as e:  # noqa: BLE001 - a model that cannot be timed is not faster
            logger.info("prefix %d not timed: %s", k, e)
            return math.nan, math.inf

    points: dict[int, dict] = {}  # prefix -> its point of the trade-off curve

    def checked(k: int) -> str:
        """``precheck``'s verdict on prefix ``k``'s model as the pass would return it."""
        assert precheck is not None
        return precheck(finish(*apply(moves[:k])) if finish is not None else model_at(k)[0])

    def timed(k: int) -> tuple[float, float]:
        if k not in times:
            times[k] = time_once(k)
            if k in points:  # scored before it was timed
                points[k]["latency_ms"] = _ms(times[k][0])
        return times[k]

    retimed: set[int] = set()  # prefixes timed twice (their times: the two readings' mean)

    def again(k: int) -> bool:
        """Time ``k`` a second time (once): the geometric mean of its two readings decides."""
        if k not in retimed:
            times[k] = two_readings(times[k], time_once(k))
            retimed.add(k)
        return times[k][1] < 1.0 - SPEED_MARGIN

    def fast(k: int) -> bool:
        if profile_us > 0 and not _credited(moves, k, profile_us):
            return False
        if timed(k)[1] < 1.0 - SPEED_MARGIN:
            return True
        # a "no" near the margin is timed again before it bounds the search: one noisy timing
        # (1.00x among 0.92-0.95x neighbours on the PP-OCRv5 recognizer) cut it to nothing
        return timed_again(timed(k)[1]) and again(k)

    def fast_enough(k: int) -> bool:
        """Whether the prefix found within budget is still :data:`SPEED_MARGIN` faster than
        float once a reading within :data:`SPEED_RESOLUTION` of that margin is timed again
        (an untimed one, all int8 found at once, is left to the manager's race): the PP-OCRv5
        detector's search chose a prefix it read at 0.97x, whose confirmation, verification
        and race (1.02x) then cost ~10 s to end float."""
        if k not in times or times[k][1] < 1.0 - SPEED_MARGIN - SPEED_RESOLUTION:
            return True
        return again(k)

    strict = False  # set once a confirmation refuses a prefix the cheap verdict passed
    #: prefixes scored with ``confirm`` itself (their verdict needs no confirmation)
    literal: set[int] = set()
    #: prefixes the verification runs passed already (``precheck``): the manager's own
    #: verdict on the literal graph, on runs the search never learns from, holds more than a
    #: confirmation on the learning runs would, so they need none (the PP-OCRv5 recognizer
    #: at 2 points chose its floor, prechecked, then confirmed it: 2 s)
    prechecked: set[int] = set()

    def ok_with(k: int) -> bool:
        if k in cache:
            return cache[k]
        model, label, floats, dyn = model_at(k)
        if confirm is not None and strict:  # a confirmation refused one: its verdict binds
            good, why, head = confirm(model, label)
            literal.add(k)
        else:
            good, why, head = score(model, label)
        out.evaluations += 1
        point = {
            "float_layers": len(floats) + already_float,
            "dynamic_layers": len(dyn),
            "metric": round(head, 6),
            "ok": good,
        }
        if speed is not None:
            # all int8 within budget at once ends the search untimed: timing it would only
            # repeat the manager's race, which times it next against the same float model (a
            # MobileNetV2 at batch 32: 0.7 s). A prefix that misses the budget is timed when
            # a decision needs its time (:func:`worth`), not for the curve: the PP-OCRv5
            # recognizer's search timed 5 such prefixes no decision read (~0.9 s each)
            at_once = k == 0 and good and k not in times
            if good and not at_once and k != checking_floor:
                timed(k)
            point["latency_ms"] = _ms(times[k][0]) if k in times else None
        points[k] = point
        out.tradeoff.append(point)
        if progress is not None:
            progress("mixed precision", k, n)
        cache[k] = good
        heads[k] = head
        if good:
            last_good.clear()
            last_good[k] = model
        else:
            out.reason = why
        return good

    def confirmed(k: int) -> bool:
        nonlocal strict
        if confirm is None or (k == n and all_float) or k in literal or k in prechecked:
            return True
        model, label, _, _ = model_at(k)
        good, why, _ = confirm(model, label)
        out.evaluations += 1
        if not good:
            cache[k] = False
            if k in points:  # its point of the curve no longer reads within budget
                points[k]["ok"] = False
            out.reason = why
            # the cheap verdict passes where the binding one does not: above this prefix the
            # cheap one is taken to pass (more moves never hurt), so each further prefix is
            # scored with the confirmation alone (on PP-OCRv5's recognizer, where one crop
            # in 74 reads differently in the literal graph, three refused confirmations cost
            # a deployed run, a timing and a literal run each: ~6 s a step instead of ~4)
            strict = True
        return good

    def worth(lo: int, hi: int) -> bool:
        """Whether a prefix between ``lo`` (missing the budget) and ``hi`` (within it) can
        be told apart from ``hi`` in speed (:data:`SPEED_RESOLUTION`); True with ``hi``
        untimed. The fastest such prefix is ``lo + 1`` (more moves never help speed): it is
        timed here, unless the latency profile already puts it :data:`PROFILE_APART` from
        ``hi``. (Timing ``lo`` itself, which cannot be kept, let the PP-OCRv5 recognizer's
        search go on where ``lo + 1`` ran at ``hi``'s speed.)"""
        if lo < 0 or hi not in times:
            return True
        k = lo + 1
        if k >= hi:
            return False
        if k not in times:
            if profile_us > 0 and (
                _profile_saving(moves, k) - _profile_saving(moves, hi) >= PROFILE_APART * profile_us
            ):
                return True
            timed(k)
        return times[hi][1] - times[k][1] >= SPEED_RESOLUTION

    def faster(k: int, than: int) -> bool:
        """Whether prefix ``k`` runs :data:`SPEED_RESOLUTION` of float's time faster than
        ``than`` (both timed; True without a probe or a timing of ``than``)."""
        if speed is None or than not in times:
            return True
        return times[than][1] - timed(k)[1] >= SPEED_RESOLUTION

    #: the floor while it is scored first: untimed, as the verification runs may refuse it
    checking_floor: int | None = None
    top = n - 1 if all_float else n  # the largest prefix the search could keep
    floor = None  # the prefix with the fewest int8 layers the search could keep, if known
    if floor_first and n and speed is not None and profile_us > 0:
        # None: not even all int8 is credited, and the search ends it as not faster, untimed
        floor = _profile_floor(moves, top, profile_us)
    elif floor_first and n:
        # no profile bound: the prefix with one int8 layer left (or, with one site, all
        # int8), which every other prefix's int8 layers include
        floor = top
    if floor is not None:
        checking_floor = floor
        if floor > 0:  # the all-int8 prefix is scored first anyway
            if not ok_with(floor):
                which = (
                    f"the one with the fewest int8 layers the latency profile credits with "
                    f"{SPEED_MARGIN:.0%} of the float model's time ({floor} moves out of int8)"
                    if profile_us > 0 and speed is not None
                    else f"the one with the fewest int8 layers the search could keep ({floor} "
                    f"of {n} moves out of int8)"
                )
                out.floor_ended = True
                return _float(
                    out,
                    moves,
                    f"budget not met by any model the search could keep: {which} misses it "
                    f"({out.reason}); more int8 layers never help, so it stays float",
                )
        # the floor is all int8 (a placement of a few large layers, such as the PP-OCRv5
        # recognizer's CTC head alone): within budget on the learning runs, it is the only
        # prefix the search could keep, and it is checked on the verification runs before its
        # confirmation and error feedback (3-4 s there) rather than after them by the manager
        if (floor > 0 or ok_with(0)) and precheck is not None:
            why = checked(floor)
            if why:
                points[floor]["ok"] = False
                out.floor_ended = True
                return _refused(out, moves, floor, why)
            prechecked.add(floor)
        checking_floor = None
    last = n  # the largest prefix worth scoring
    bounded = False
    lo = -1  # the largest prefix known to miss the budget (-1: none tried)
    hi: int | None = None  # a prefix known within budget to bisect down from (None: search)
    near = None
    if floor and cache.get(floor) and speed is not None and profile_us > 0:
        # the floor within budget (and the verification runs' check), and timed fast: the
        # prefix nearest below it that the profile puts PROFILE_APART faster is scored next.
        # Missing the budget, it bounds the search from below (more moves never hurt), and
        # only the prefixes between the two are left: the PP-OCRv5 recognizer at 2 points
        # scored all int8 (79 %), one move (81 %) and 3 of its 31 layers int8 (97 %) and
        # timed three models to keep its floor, its CTC head alone (~7 s)
        near = _profile_near(moves, floor, profile_us)
        if near is not None and not fast(floor):
            near = None
    if near is not None and not ok_with(near):
        lo, hi, last, bounded = near, floor, floor, True
    elif speed is not None and n and not ok_with(0):
        if not fast(0):
            return _not_faster(out, moves, 0, timed(0)[1])
        last, bounded = _last_fast(n, fast, all_float), True
    if hi is None and precheck is not None and n and not ok_with(0):
        top = last if bounded else top
        if (
            top > 1
            and top not in prechecked
            and ok_with(top)
            and worth(0, top)
            and fast_enough(top)
        ):
            why = checked(top)
            if why:
                if top in points:  # the curve's point: refused on the verification runs
                    points[top]["ok"] = False
                return _refused(out, moves, top, why)
            prechecked.add(top)
    while True:
        if hi is None:
            hi = _first_ok_above(lo, last, ok_with, cache, bounded=bounded, worth=worth)
            if hi is None and bounded and last < n:
                return _not_faster(
                    out, moves, last + 1, timed(last + 1)[1] if last + 1 in times else None
                )
            if hi is None:
                return _float(
                    out, moves, f"budget not met even with every site out of int8 ({out.reason})"
                )
            lo = max((k for k, good in cache.items() if not good and k < hi), default=-1)
            # a prefix below found within budget already (the one scored after the floor)
            hi = min(k for k, good in cache.items() if good and lo < k <= hi)
        steps = 0
        while hi - lo > 1 and worth(lo, hi):
            mid = (lo + hi) // 2
            if target is not None and steps % 2 == 0 and lo in heads and hi in heads:
                mid = _interpolate(lo, hi, heads[lo], heads[hi], target)
            steps += 1
            if ok_with(mid):
                hi = mid
            else:
                lo = mid
        if speed is not None and not (hi == n and all_float) and not fast_enough(hi):
            # the prefixes below miss the budget and those above run slower still (more moves
            # never help speed): nothing is both within budget and faster
            return _not_faster(out, moves, hi, times[hi][1])
        if confirmed(hi):
            break
        lo, hi = hi, None
    if floor is not None and floor in prechecked and hi < floor and not faster(hi, floor):
        # more int8 layers than the floor the verification runs passed, and no faster than
        # it by what the probe resolves: the floor is kept (fewer int8 layers, checked
        # already). On the PP-OCRv5 recognizer at 2 points in the slow regime, a noisy turn
        # sent the search below its floor (0.88x) to a 4-layer prefix at 0.89x, which the
        # manager then verified and raced: 38 s instead of 22
        hi = floor
    if hi in points:  # the report rings the kept model's point
        points[hi]["chosen"] = True
    floats, dyn = apply(moves[:hi])
    out.floats, out.dynamic = sorted(floats), sorted(dyn)
    # the prefixes above found within budget too, nearest first: the manager's fallbacks
    for k in sorted(k for k, good in cache.items() if good and k > hi):
        f, d = apply(moves[:k])
        if not (k == n and all_float) and len(out.fallbacks) < MAX_FALLBACKS:
            out.fallbacks.append((sorted(f), sorted(d)))
            if k in prechecked:
                out.verified_fallback = len(out.fallbacks) - 1
    # the prefix the verification runs passed comes last if not already offered: the
    # manager's last resort before rolling the pass back (``PassResult.verified_fallbacks``)
    checked_above = [k for k in sorted(prechecked) if k > hi and cache.get(k)]
    if checked_above and out.verified_fallback is None:
        f, d = apply(moves[: checked_above[0]])
        out.fallbacks.append((sorted(f), sorted(d)))
        out.verified_fallback = len(out.fallbacks) - 1
    out.tradeoff.sort(key=lambda p: (p["float_layers"], p["dynamic_layers"]))
    if hi in times:
        out.speed_ratio = times[hi][1]
    return out


def two_readings(first: tuple[float, float], second: tuple[float, float]) -> tuple[float, float]:
    """One timing from two readings of a model, each (ms, ratio to float): the mean of the
    ms and the geometric mean of the ratios, which weighs a reading 2x faster and one 2x
    slower alike (1.0x; their arithmetic mean would read 1.25x). The search's second reading
    of a prefix and :meth:`.static.QuantizeInt8._whole_gain`'s both read it."""
    return (first[0] + second[0]) / 2, math.sqrt(first[1] * second[1])


def timed_again(ratio: float) -> bool:
    """Whether a probe's reading that is not :data:`SPEED_MARGIN` faster than float is close
    enough to the margin (:data:`RETIME_BAND`) for a second reading to turn it."""
    return 1.0 - SPEED_MARGIN <= ratio < 1.0 - SPEED_MARGIN + RETIME_BAND


def _ms(ms: float) -> float | None:
    """A trade-off point's latency: ``ms`` rounded, None when not timed."""
    return round(ms, 4) if math.isfinite(ms) else None


def _interpolate(lo: int, hi: int, at_lo: float, at_hi: float, target: float) -> int:
    """The prefix between ``lo`` (missing the budget) and ``hi`` (within it) where the
    headline number would reach ``target`` if it grew linearly, kept strictly inside."""
    if at_hi <= at_lo:  # not increasing (noise): the middle
        return (lo + hi) // 2
    frac = min(max((target - at_lo) / (at_hi - at_lo), 0.0), 1.0)
    return min(max(lo + round(frac * (hi - lo)), lo + 1), hi - 1)


def _last_fast(n: int, fast: Callable[[int], bool], all_float: bool) -> int:
    """The largest prefix ``fast`` accepts (0 is accepted), galloping down from the top
    (``n``, or ``n - 1`` when ``all_float``: the float model itself is not faster than float
    and is not timed): top, top - 1, top - 3, top - 7, ..., then bisection between the last
    refused and the first accepted. The moves that give back the most time per unit of
    accuracy come last (:func:`order_moves`), so the prefixes stay fast until near the end:
    the PP-OCRv5 recognizer's last fast prefix is 22-23 of 24-25 and the detector's 27 of 29,
    which galloping down finds in 3 timings each (a "no" is timed twice) where bisection from
    the middle took 6 and 5 (~1 s and 0.6 s each); a boundary in the middle costs about twice
    bisection's timings."""
    top = n - 1 if all_float else n
    hi, k, step = None, top, 1
    while k > 0 and not fast(k):
        hi, k, step = k, max(0, k - step), step * 2
    lo = k
    if hi is None:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fast(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _credited(moves: list[Move], k: int, profile_us: float) -> bool:
    """Whether the latency profile credits the int8 layers left after ``k`` moves with
    :data:`SPEED_MARGIN` of the float model's time ``profile_us`` (the search's profile
    bound: a prefix it does not credit is not fast, untimed)."""
    return _profile_saving(moves, k) >= SPEED_MARGIN * profile_us


def _profile_floor(moves: list[Move], top: int, profile_us: float) -> int | None:
    """The largest prefix up to ``top`` the latency profile credits (:func:`_credited`), None
    when not even all int8 is: more moves only take gains away (:func:`_profile_saving`), so
    every prefix above it fails the search's profile bound."""
    return next((k for k in range(top, -1, -1) if _credited(moves, k, profile_us)), None)


def _profile_near(moves: list[Move], floor: int, profile_us: float) -> int | None:
    """The largest prefix below ``floor`` whose int8 layers the latency profile credits with
    :data:`PROFILE_APART` of the float model's time ``profile_us`` more than the floor's, None
    when not even all int8 is that far (:func:`search`)."""
    at_floor = _profile_saving(moves, floor)
    return next(
        (
            k
            for k in range(floor - 1, -1, -1)
            if _profile_saving(moves, k) - at_floor >= PROFILE_APART * profile_us
        ),
        None,
    )


def _profile_saving(moves: list[Move], k: int) -> float:
    """The time (µs) the latency profile credits the int8 layers left after ``k`` moves with:
    a static int8 layer its whole gain, a dynamic one half (as :func:`order_moves` costs it)."""
    floats, dyn = apply(moves[:k])
    gain = {m.site: m.gain_us for m in moves}
    return sum(g / 2 if s in dyn else g for s, g in gain.items() if s not in floats)


def _float(out: Plan, moves: list[Move], reason: str) -> Plan:
    """The search's outcome when no placement is kept: every move made (float), ``reason``."""
    out.met = False
    out.floats = sorted(apply(moves)[0])
    out.reason = reason
    return out


def _not_faster(out: Plan, moves: list[Move], k: int, ratio: float | None) -> Plan:
    """The search's outcome when the budget holds only where int8 no longer pays: float."""
    out.not_faster_at = k
    at = f" ({ratio:.2f}x its time, interleaved)" if ratio is not None else ""
    what = "with every layer int8" if k == 0 else f"with {k} moves out of int8"
    return _float(
        out,
        moves,
        f"int8 does not pay within the budget: {what} the model is not {SPEED_MARGIN:.0%} "
        f"faster than float{at}, and the models int8 enough to be are not within the budget "
        f"({out.reason}); it stays float",
    )


def _refused(out: Plan, moves: list[Move], k: int, why: str) -> Plan:
    """The search's outcome when the verification runs refuse the prefix ``k`` with the
    fewest int8 layers it would keep: float."""
    out.refused_at = k
    what = f"{k} moves out of int8" if k else "every layer int8, the only model it could keep"
    return _float(
        out,
        moves,
        f"int8 does not meet the budget on the verification runs: the model with the fewest "
        f"int8 layers the search would keep ({what}, within the budget on the runs it learns "
        f"from) fails there ({why}); fewer moves leave more layers int8, so it stays float",
    )


def _first_ok_above(
    lo: int,
    n: int,
    ok_with: Callable[[int], bool],
    known: dict[int, bool],
    *,
    bounded: bool = False,
    worth: Callable[[int, int], bool] = lambda lo, hi: True,
) -> int | None:
    """The first prefix above ``lo`` found within the budget, galloping: lo+1, lo+2, lo+4,
    ... up to ``n`` (0, 1, 2, 4, ... from the start); None when even ``n`` misses it.

    From the start, when the all-int8 model misses the budget, the prefix one move short of
    the end (the least int8 there is) is tried next: if even it misses, no smaller prefix can
    meet the budget (more moves never hurt), so only ``n`` is left, with no gallop through
    the middle (PP-OCRv5's detector, whose every int8 candidate changes some image's text:
    2 task-metric runs instead of 10). If it meets the budget, one move is tried (a single
    sensitive layer), then the caller bisects between the two: task-metric budgets put the
    boundary far up (the recognizer: 15 of 22 moves), where galloping from below costs twice
    the ~log2(n) runs of bisection. ``known``: the verdicts so far; a gallop step past a
    prefix known within budget stops there. ``worth(lo, hi)``: whether a prefix between two
    can be faster than ``hi`` beyond what the speed probe resolves (else ``n`` is taken
    without trying one move)."""
    if lo < 0:
        if ok_with(0):
            return 0
        if bounded:  # ``n``: the last prefix still faster than float; none above is scored
            if n == 0 or not ok_with(n):
                return None
            return 1 if n > 1 and worth(0, n) and ok_with(1) else n
        if n >= 3:
            if not ok_with(n - 1):
                return n if ok_with(n) else None
            # within budget one move short of the end: one move, else bisection below n - 1
            return 1 if ok_with(1) else n - 1
        lo = 0
    step = 1
    while True:
        k = min(n, lo + step)
        if k <= lo:
            return None
        good = [j for j, ok in known.items() if ok and lo < j <= k]
        if good:
            return min(good)
        if ok_with(k):
            return k
        if k == n:
            return None
        lo, step = k, step * 2


class SpeedProbe:
    """Times candidates against the float model, in turns on one feed: each call gives the
    candidate's median ms and its ratio to the float model: the median of the turns' own
    ratios (interleaved, so drift on a busy machine cancels; a ratio of medians over all the
    turns falls between the speeds of an AMD EPYC that changes regime within a call, as the
    race's did: :attr:`onnxopt.timing.Race.round_ratio`). At least ``min_pairs`` turns, then up
    to ``seconds`` or ``max_pairs`` (ORT_ENABLE_ALL, 2 threads, spinning stopped between runs
    as in :func:`onnxopt.timing.race`).

    Each turn starts with an untimed run, as the race's rounds do: the first run after a
    switch of sessions pays for the switch (caches, threads), and timed, it pulled the ratios
    toward 1 (the 0.06 ms digits ResNet read 0.97x in turns of one timed run, where the race
    and the benchmark read 0.71-0.83x, and the pass left it float). A model under
    :data:`SHORT_MS` is timed several runs a turn (up to 5), so a turn outlasts the switch."""

    def __init__(
        self,
        reference: onnx.ModelProto,
        feed: dict[str, np.ndarray],
        *,
        min_pairs: int = 6,
        max_pairs: int = 12,
        seconds: float = 0.5,
    ) -> None:
        from onnxopt.timing import RACE_IDLE_SPIN, model_session

        self._session = lambda m: model_session(m, threads=2, idle_spin=RACE_IDLE_SPIN)
        self.feed = feed
        self.min_pairs, self.max_pairs, self.seconds = min_pairs, max_pairs, seconds
        self.reference = reference
        self.ref: Any = None  # the float model's session, opened at the first call
        self.ref_times: list[float] = []
        self.per_turn = 1  # timed runs a turn (set at the first call from float's time)
        #: every turn's ratio, by the timed graph (:func:`onnxopt.timing.structure_digest`):
        #: the manager's race over the model the pass returns starts from them
        self.turns: dict[bytes, list[float]] = {}

    @phases.timed(phases.TIMING)
    def __call__(self, model: onnx.ModelProto) -> tuple[float, float]:
        from onnxopt.timing import _timed_runs, structure_digest

        if self.ref is None:
            self.ref = self._session(self.reference)
            self.ref.run(None, self.feed)
            warm = min(_timed_runs(self.ref, self.feed, 3))
            self.per_turn = max(1, min(5, int(SHORT_MS / max(warm, 1e-3))))
        s = self._session(model)
        s.run(None, self.feed)
        a: list[float] = []
        b: list[float] = []
        ratios: list[float] = []
        turns = 0
        start = time.perf_counter()
        while turns < self.min_pairs or (
            turns < self.max_pairs and time.perf_counter() - start < self.seconds
        ):
            ta: list[float] = []
            tb: list[float] = []
            for sess, out in ((self.ref, ta), (s, tb)) if turns % 2 else ((s, tb), (self.ref, ta)):
                sess.run(None, self.feed)  # untimed: the run after a switch pays for it
                out += _timed_runs(sess, self.feed, self.per_turn)
            a += ta
            b += tb
            ratios.append(float(np.median(tb)) / max(float(np.median(ta)), 1e-9))
            turns += 1
        self.ref_times += a
        if isinstance(model, onnx.ModelProto):
            self.turns.setdefault(structure_digest(model), []).extend(ratios)
        return float(np.median(b)), float(np.median(ratios))

    def turns_of(self, model: onnx.ModelProto) -> list[float]:
        """The turns' ratios of every model timed with ``model``'s graph (none: [])."""
        from onnxopt.timing import structure_digest

        return list(self.turns.get(structure_digest(model), []))

    @property
    def float_ms(self) -> float:
        """The float model's median over every turn so far."""
        return float(np.median(self.ref_times)) if self.ref_times else math.nan
