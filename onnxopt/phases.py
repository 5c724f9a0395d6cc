"""Where a run's time goes: seconds per phase, each counted once (exclusive of the phases
nested in it).

A quantization that takes a minute should say why: the model runs that check candidates, the
user's task metric, the latency measurements, the calibration statistics. The pass manager
starts a :class:`Recorder` around its run; the functions that do the costly work are wrapped
in :func:`phase`. Only the thread that started the recorder counts (a session built in a
helper thread overlaps the main thread's runs and would be counted twice); without a recorder
a phase costs two clock reads. The rest of the run (graph rewrites, checks, building models,
serialization) is what the phases leave.

``PipelineReport.time_breakdown`` holds the seconds and ``time_calls`` how often each phase
was entered; the CLI prints them in one line.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: the phases, in the order the report lists them
CHECKING = "checking outputs"  # model runs that verify a stage or score a candidate
METRIC = "task metric"  # the user's --metric callable
COMPARING = "comparing outputs"
TIMING = "timing"  # latency profiles, races, the speed gate
CALIBRATION = "calibration"  # int8 ranges and smoothing statistics
SENSITIVITY = "sensitivity"  # per-layer int8 error, one instrumented run
TRAINING = "training"  # distillation, learned rounding
OTHER = "other"  # graph rewrites, checks, building models (what the phases leave)
ORDER = (CHECKING, METRIC, COMPARING, TIMING, CALIBRATION, SENSITIVITY, TRAINING, OTHER)

_active: Recorder | None = None


class Recorder:
    """Exclusive seconds (and calls) per phase on the thread that created it."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}  # outermost entries per phase
        self._stack: list[list[Any]] = []  # [name, start, seconds spent in nested phases]
        self._start = time.perf_counter()
        self.seconds = 0.0

    def enter(self, name: str) -> None:
        if all(f[0] != name for f in self._stack):  # a phase inside itself is one call
            self.calls[name] = self.calls.get(name, 0) + 1
        self._stack.append([name, time.perf_counter(), 0.0])

    def leave(self) -> None:
        name, start, nested = self._stack.pop()
        dt = time.perf_counter() - start
        self.totals[name] = self.totals.get(name, 0.0) + dt - nested
        if self._stack:
            self._stack[-1][2] += dt

    def breakdown(self) -> dict[str, float]:
        """Seconds per phase (rounded to ms, phases that took none left out), ``other`` the
        rest of the recorded span."""
        total = self.seconds or time.perf_counter() - self._start
        out = {k: round(self.totals[k], 3) for k in ORDER if self.totals.get(k)}
        out[OTHER] = round(max(0.0, total - sum(self.totals.values())), 3)
        return out


@contextmanager
def recording() -> Iterator[Recorder]:
    """Record the phases of what runs inside (the previous recorder, if any, resumes after:
    a pipeline run inside another, as the search's steps do, is counted by its own)."""
    global _active
    outer, rec = _active, Recorder()
    _active = rec
    try:
        yield rec
    finally:
        rec.seconds = time.perf_counter() - rec._start
        _active = outer
        if outer is not None and outer.thread == rec.thread:  # its phases are the outer's too
            for k, v in rec.totals.items():
                outer.totals[k] = outer.totals.get(k, 0.0) + v
            for k, n in rec.calls.items():
                outer.calls[k] = outer.calls.get(k, 0) + n
            if outer._stack:
                outer._stack[-1][2] += sum(rec.totals.values())


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the time inside as ``name`` (nested phases count as theirs)."""
    rec = _active
    if rec is None or threading.get_ident() != rec.thread:
        yield
        return
    rec.enter(name)
    try:
        yield
    finally:
        rec.leave()


def timed(name: str) -> Callable[[F], F]:
    """Decorator form of :func:`phase`."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with phase(name):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def line(breakdown: dict[str, float], calls: dict[str, int] | None = None) -> str:
    """``task metric 8.0 s (12 calls), checking outputs 6.1 s (40 calls), ...``, largest
    first, phases under 0.05 s left out."""
    calls = calls or {}
    parts = sorted(breakdown.items(), key=lambda kv: -kv[1])
    return ", ".join(
        f"{k} {v:.1f} s" + (f" ({_calls(calls[k])})" if calls.get(k) else "")
        for k, v in parts
        if v >= 0.05
    )


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"
