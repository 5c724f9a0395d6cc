"""Timing one onnxruntime session: session options as the benchmarks use them, and
:func:`measure` (latencies, session creation time, memory). :mod:`onnxopt.bench` runs it per
model and batch, in this process or in a fresh one (:mod:`onnxopt.bench_worker`)."""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxopt import phases
from onnxopt.errors import ModelError

#: progress callback: (what, done, total)
Progress = Callable[[str, float, float], None]


def session_options(threads: int = 0, optimization: str = "all", *, idle_spin: bool = True) -> Any:
    """onnxruntime SessionOptions: ``threads`` intra-op threads (0: onnxruntime's choice), one
    inter-op thread, graph optimizations ``disable|basic|extended|all``, quiet logs.
    ``idle_spin=False``: the intra-op threads stop spinning when a run ends (they still spin
    within it; see :data:`RACE_IDLE_SPIN`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not idle_spin:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def session(
    model: Any, *, threads: int = 0, optimization: str = "all", idle_spin: bool = True
) -> Any:
    """A CPU session for a path, bytes or ModelProto with :func:`session_options`."""
    import onnxruntime as ort

    if hasattr(model, "SerializeToString"):
        return model_session(model, threads=threads, optimization=optimization, idle_spin=idle_spin)
    data = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(
        data,
        session_options(threads, optimization, idle_spin=idle_spin),
        providers=["CPUExecutionProvider"],
    )


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


@phases.timed(phases.TIMING)
def measure(
    path: str,
    runs_feeds: list[dict[str, np.ndarray]],
    *,
    provider: str,
    threads: int,
    optimization: str,
    warmup: int,
    runs: int,
    seconds: float | None,
    progress: Progress | None = None,
    isolated: bool = False,
) -> dict[str, Any]:
    """Time one session on ``runs_feeds`` (cycled). Returns latencies and memory numbers."""
    import onnxruntime as ort

    base = _rss_mb()
    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(
            path, session_options(threads, optimization), providers=[provider]
        )
    except Exception as e:
        raise ModelError(
            f"{path}: onnxruntime cannot create a session ({str(e).strip().splitlines()[-1][:200]})"
        ) from e
    session_ms = (time.perf_counter() - t0) * 1e3
    samples = [_rss_mb()]
    k = len(runs_feeds)
    for i in range(warmup):
        sess.run(None, runs_feeds[i % k])
    samples.append(_rss_mb())
    lat: list[float] = []
    start = last = time.perf_counter()
    total = seconds if seconds is not None else float(runs)
    i = 0
    while True:
        feed = runs_feeds[i % k]
        t = time.perf_counter_ns()
        sess.run(None, feed)
        lat.append((time.perf_counter_ns() - t) / 1e6)
        i += 1
        now = time.perf_counter()
        done = (now - start) if seconds is not None else float(i)
        if progress is not None and (now - last > 0.1 or done >= total):
            progress("run", min(done, total), total)
            last = now
        if (seconds is None and i >= runs) or (
            seconds is not None and now - start >= seconds and i >= 3
        ):
            break
    samples.append(_rss_mb())
    if isolated:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        method = "fresh subprocess: ru_maxrss peak; session = peak - RSS before the session"
    else:
        peak = max(samples)
        method = "in-process RSS delta (psutil samples; approximate)"
    return {
        "latencies_ms": lat,
        "session_ms": session_ms,
        "peak_rss_mb": peak,
        "session_rss_mb": max(0.0, peak - base),
        "memory_method": method,
    }


# --------------------------------------------------------------------------- API


def model_session(
    model: Any, *, threads: int = 2, optimization: str = "all", idle_spin: bool = True
) -> Any:
    """A timing session of a ModelProto (weights given as in-memory initializers, so models
    above 2 GB need no file), with :func:`session_options`."""
    from onnxopt import sessions

    def options() -> Any:
        return session_options(threads, optimization, idle_spin=idle_spin)

    return sessions.build(model, options, copy_weights=True)


#: whether the sessions of a race (two alive at once, run in turns) keep their intra-op
#: threads spinning between runs. They do not (onnxruntime's ``session.force_spinning_stop``:
#: they spin within a run, as deployed, and stop when it ends): one session's spinning workers
#: competed with the other's runs, and which one it hurt depended on the pair. The same
#: 0.6 ms digits MobileNetV2 raced against itself read 0.76x to 1.39x (6 to 12 of 20 rounds);
#: stopped, 1.00x to 1.01x at the same latency (turning spinning off altogether also evened
#: it, but ran the model at 0.97 ms instead of 0.61). The realzoo "never slower" table had five
#: false "slower" verdicts on models that optimize had not changed. int8's per-layer latency
#: profile runs its models one at a time instead (:func:`onnxopt.passes.quantize.latency.
#: measure_all`): two profiling sessions in turns disturbed each other either way.
RACE_IDLE_SPIN = False


#: a race stops at its minimum rounds when one model won them all and the other's median is
#: at least this ratio away (b/a <= DECISIVE or >= 1/DECISIVE)
DECISIVE = 0.9
DECISIVE_P = 0.002
#: and from this many rounds on, when one model won every round and the other's median is at
#: least EARLY_DECISIVE away (6 of 6: p = 0.016): a verdict like an int8 MobileNetV2's 0.45x
#: needs no ten rounds (at batch 32 the last four of ten cost 0.6 s of the verifier's race)
EARLY_ROUNDS = 6
EARLY_DECISIVE = 0.75

#: timed runs a round: :data:`PER_ROUND`, or :data:`SLOW_PER_ROUND` when a warm run of either
#: model takes :data:`SLOW_RUN_MS` or more. Each round starts with an untimed run, after which
#: a slow model's next runs showed no switch penalty; measured on a PP-OCRv5 recognizer (30-36
#: ms) and a MobileNetV2 at batch 32 (7.5-16 ms), 2 timed runs gave the 5-run verdicts
#: (every round won; the recognizer's ratios within 0.03) in half the time: 2.3 s instead of
#: 4.5 s a recognizer race.
PER_ROUND = 5
SLOW_PER_ROUND = 2
SLOW_RUN_MS = 20.0


def sign_test(wins: int, n: int) -> float:
    """One-sided exact sign test: the chance of ``wins`` or more successes in ``n`` fair coin
    flips."""
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2**n if n else 1.0


@dataclass
class Race:
    """Two models timed in interleaved rounds on the same input (latencies in ms).

    Attributes:
        a_ms, b_ms: median latency of each over every timed run.
        rounds: how many rounds; in each, both models ran ``per_round`` timed runs.
        b_wins: the rounds in which b's median was below a's.
        round_ratio: the median over the rounds of b's median / a's (None: ``b_ms / a_ms``).
    """

    a_ms: float
    b_ms: float
    rounds: int
    b_wins: int
    threads: int
    #: how: "interleaved", or "one after the other" (both sessions did not fit the budget)
    mode: str = "interleaved"
    round_ratio: float | None = None
    #: of ``rounds``, those timed before the race (``race(prior=...)``): a pass's own turns
    prior_rounds: int = 0

    @property
    def ratio(self) -> float:
        """b's time over a's: the median of the rounds' ratios, each round's two models run
        next to each other. The ratio of the medians over every run is not robust to a change
        of the machine's speed within the race: on an AMD EPYC whose runs moved between 15 and
        32 ms from round to round, pooled medians that fell between the two modes read the
        PP-OCRv5 detector's placement at 0.66x where every round read 0.82-0.88x."""
        if self.round_ratio is not None:
            return self.round_ratio
        return self.b_ms / self.a_ms if self.a_ms > 0 else float("inf")

    @property
    def p_value(self) -> float:
        """One-sided sign test: the chance of ``b_wins`` or more wins if neither is faster."""
        return sign_test(self.b_wins, self.rounds)

    def reversed(self) -> Race:
        """The same race read the other way round (b's runs as a's, b's losses as wins)."""
        inverse = None if self.round_ratio is None else 1.0 / self.round_ratio
        return Race(
            self.b_ms,
            self.a_ms,
            self.rounds,
            self.rounds - self.b_wins,
            self.threads,
            self.mode,
            inverse,
            self.prior_rounds,
        )

    @property
    def b_faster(self) -> bool:
        """b is faster beyond noise: a lower median and a sign test at 5 %."""
        return self.ratio < 0.99 and self.p_value < 0.05

    def describe(self) -> str:
        how = (
            f"{self.rounds} interleaved rounds"
            if self.mode == "interleaved"
            else f"{self.rounds} rounds, the models {self.mode}"
        )
        # the ratio is the rounds' median (it can differ from the two medians' quotient)
        per = ", by round" if self.round_ratio is not None else ""
        prior = f", {self.prior_rounds} of them the pass's own" if self.prior_rounds else ""
        return (
            f"{self.b_ms:.3g} ms vs {self.a_ms:.3g} ms ({self.ratio:.2f}x{per}; b faster in "
            f"{self.b_wins} of {how}{prior}, ORT_ENABLE_ALL, {self.threads} threads)"
        )


def _race_of(
    times: dict[int, list[float]],
    ratios: list[float],
    rounds: int,
    wins: int,
    threads: int,
    mode: str = "interleaved",
) -> Race:
    """The :class:`Race` of every timed run (``times``: a's and b's, ms) and the rounds'
    b/a ``ratios`` (none: the ratio of the medians)."""
    return Race(
        float(np.median(times[0])),
        float(np.median(times[1])),
        rounds,
        wins,
        threads,
        mode,
        float(np.median(ratios)) if ratios else None,
    )


def _settled(
    times: dict[int, list[float]],
    rounds: int,
    wins: int,
    min_rounds: int,
    seconds: float,
    elapsed: float,
    early_decisive: float = EARLY_DECISIVE,
    ratios: list[float] | None = None,
) -> bool:
    """Stop after ``min_rounds`` and ``seconds``, unless b looks faster but the sign test is
    not yet sure (then go on, up to three times ``seconds``). Stop from ``min_rounds`` on,
    before ``seconds``, when the verdict is decided: the sign test gives the leader
    p < :data:`DECISIVE_P` (10 wins of 10, 12 of 13) and its median is at least
    :data:`DECISIVE` away (an int8 model 1.6x faster than its input needs no two seconds to
    show it); from :data:`EARLY_ROUNDS` on, when the leader won every round and its median is
    at least ``early_decisive`` away (:data:`EARLY_DECISIVE`; a caller that reads the race
    against a threshold of its own may stop once the ratio is clear of it). ``ratios``: the
    rounds' b/a ratios, whose median is the race's ratio (:attr:`Race.ratio`)."""
    if rounds < min(min_rounds, EARLY_ROUNDS):
        return False
    r = _race_of(times, ratios or [], rounds, wins, 0)
    gap = abs(math.log(max(r.ratio, 1e-9)))
    if wins in (0, rounds) and gap >= math.log(1 / early_decisive):
        return True
    if rounds < min_rounds:
        return False
    leader = Race(r.a_ms, r.b_ms, rounds, max(wins, rounds - wins), 0).p_value
    if leader < DECISIVE_P and gap >= math.log(1 / DECISIVE):
        return True
    if elapsed < seconds:
        return False
    unsure = r.ratio < 0.99 and 0.05 <= r.p_value < 0.5
    return not unsure or elapsed > 3 * seconds


@phases.timed(phases.TIMING)
def _timed_runs(sess: Any, feed: dict[str, np.ndarray], n: int) -> list[float]:
    """``n`` runs of ``sess`` on ``feed``, each timed alone (ms)."""
    lat = []
    for _ in range(n):
        t = time.perf_counter_ns()
        sess.run(None, feed)
        lat.append((time.perf_counter_ns() - t) / 1e6)
    return lat


@phases.timed(phases.TIMING)
def race(
    a: Any,
    b: Any,
    feed: dict[str, np.ndarray],
    *,
    threads: int = 2,
    seconds: float = 2.0,
    min_rounds: int = 10,
    max_rounds: int = 40,
    per_round: int | None = None,
    max_bytes: int | None = None,
    early_decisive: float = EARLY_DECISIVE,
    prior: list[float] | tuple[float, ...] = (),
) -> Race:
    """Time ModelProtos ``a`` and ``b`` on ``feed`` in interleaved rounds (order alternating,
    one untimed run first in each), for at least ``min_rounds`` and about ``seconds`` (longer,
    up to ``max_rounds``, while b looks faster but not yet beyond noise; shorter when one model
    is decisively faster: :func:`_settled`, with ``early_decisive``).

    ``prior``: the b/a ratios of rounds timed before, interleaved in the same way on the same
    feed, of the same two graphs (a searching pass times its result against its input, whose
    weights the race's b may have rounded otherwise since: :func:`structure_digest`). They
    count as rounds of this race (its wins, its ratio, when it may stop), which still times
    :data:`PRIOR_OWN_ROUNDS` rounds of its own at least: the PP-OCRv5 recognizer's int8 model
    at 0.88x its input took 12 rounds, 2.3 s, after the search had timed it in 6 turns.
    The medians in ms are the race's own runs'.

    ``per_round`` timed runs a round (None: :data:`PER_ROUND`, or :data:`SLOW_PER_ROUND` from
    the first round in which either model's median run takes :data:`SLOW_RUN_MS` or more, the
    warm-up runs included: on an AMD EPYC whose speed moves between two regimes, the PP-OCRv5
    detector ran 15 ms warm and 32 ms from the race's third round on, where 5 runs a round
    made each round 0.33 s). The untimed run that starts
    each round takes the switch of sessions: without it, the next one or two runs are slow
    (a MobileNetV2 at batch 32: 28-45 ms, then 15 ms warm), and with 1-2 runs a round an int8
    model 0.55x its input won only 18 of 22 and 21 of 28 rounds.

    With ``max_bytes``, when two optimized sessions (each may hold a copy and a packed copy of
    its weights) would not fit, the models are timed one after the other instead, each alone
    with its weights shared and not prepacked (:func:`race_apart`).
    """
    from onnxopt import weights

    need = 2 * (weights.weight_bytes(a) + weights.weight_bytes(b))
    if max_bytes is not None and need > max_bytes:  # timed otherwise: no prior
        return race_apart(
            a, b, feed, threads=threads, rounds=min_rounds, per_round=per_round or PER_ROUND
        )
    sa = model_session(a, threads=threads, idle_spin=RACE_IDLE_SPIN)
    sb = model_session(b, threads=threads, idle_spin=RACE_IDLE_SPIN)
    warm = 0.0
    for s in (sa, sb):
        for _ in range(2):
            s.run(None, feed)
        warm = max(warm, _timed_runs(s, feed, 1)[0])
    adapt = per_round is None
    if per_round is None:
        per_round = SLOW_PER_ROUND if warm >= SLOW_RUN_MS else PER_ROUND
    times: dict[int, list[float]] = {0: [], 1: []}
    ratios: list[float] = [float(r) for r in prior]
    wins = sum(r < 1.0 for r in ratios)
    rounds = len(ratios)
    own = rounds + PRIOR_OWN_ROUNDS if ratios else 0  # the rounds reached with enough own
    max_rounds += rounds
    start = time.perf_counter()
    while rounds < max_rounds and (
        rounds < own
        or not _settled(
            times,
            rounds,
            wins,
            min_rounds,
            seconds,
            time.perf_counter() - start,
            early_decisive,
            ratios,
        )
    ):
        med = {}
        for k in (0, 1) if rounds % 2 == 0 else (1, 0):
            s = (sa, sb)[k]
            s.run(None, feed)
            lat = _timed_runs(s, feed, per_round)
            times[k] += lat
            med[k] = float(np.median(lat))
        wins += med[1] < med[0]
        ratios.append(med[1] / med[0] if med[0] > 0 else float("inf"))
        rounds += 1
        if adapt and max(med.values()) >= SLOW_RUN_MS:
            per_round = SLOW_PER_ROUND  # the machine slowed down (or the feed is large)
    out = _race_of(times, ratios, rounds, wins, threads)
    out.prior_rounds = len(prior)
    return out


#: the rounds a race given ``prior`` rounds times itself at least (:func:`race`)
PRIOR_OWN_ROUNDS = 3


def structure_digest(model: Any) -> bytes:
    """A digest of what a ModelProto's speed depends on: its nodes (their metadata left
    out), inputs, outputs and opsets, and its initializers' names, types and shapes, not their
    values: two models with the same digest differ in their weights' values at most (a
    layer's int8 weights rounded with error feedback rather than to nearest)."""
    import hashlib

    h = hashlib.blake2b()
    g = model.graph
    for op in model.opset_import:
        h.update(op.SerializeToString(deterministic=True))
    for n in g.node:
        node = type(n)()
        node.CopyFrom(n)
        node.ClearField("metadata_props")
        h.update(node.SerializeToString(deterministic=True))
    for v in list(g.input) + list(g.output):
        h.update(v.SerializeToString(deterministic=True))
    for t in g.initializer:
        h.update(f"{t.name}:{t.data_type}:{list(t.dims)};".encode())
    return h.digest()


def quick_latency(
    model: Any,
    feed: dict[str, np.ndarray],
    *,
    threads: int = 2,
    seconds: float = 0.3,
    min_runs: int = 5,
    max_runs: int = 200,
) -> float:
    """Median latency in ms of a ModelProto on ``feed`` over about ``seconds`` (at least
    ``min_runs``): a short measure for trade-off plots, not a benchmark."""
    sess = model_session(model, threads=threads)
    sess.run(None, feed)
    lat: list[float] = []
    start = time.perf_counter()
    while len(lat) < max_runs and (len(lat) < min_runs or time.perf_counter() - start < seconds):
        t = time.perf_counter_ns()
        sess.run(None, feed)
        lat.append((time.perf_counter_ns() - t) / 1e6)
    return float(np.median(lat))


@phases.timed(phases.TIMING)
def race_apart(
    a: Any, b: Any, feed: dict[str, np.ndarray], *, threads: int, rounds: int, per_round: int
) -> Race:
    """Time ``a`` then ``b``, one session alive at a time (weights shared with the mapping,
    no prepacked copy); round ``k`` of one is compared with round ``k`` of the other."""
    from onnxopt import sessions

    def options() -> Any:
        so = session_options(threads, "all")
        so.add_session_config_entry("session.disable_prepacking", "1")
        return so

    med: dict[int, list[float]] = {}
    times: dict[int, list[float]] = {0: [], 1: []}
    for k, model in enumerate((a, b)):
        s = sessions.build(model, options)
        for _ in range(2):
            s.run(None, feed)
        med[k] = []
        for _ in range(rounds):
            lat = _timed_runs(s, feed, per_round)
            times[k] += lat
            med[k].append(float(np.median(lat)))
        del s
    wins = sum(y < x for x, y in zip(med[0], med[1]))
    ratios = [y / x if x > 0 else float("inf") for x, y in zip(med[0], med[1])]
    return _race_of(
        times, ratios, rounds, wins, threads, "one after the other, without prepacked weights"
    )
