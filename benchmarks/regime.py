"""The machine's speed regime during a latency measurement, read turn by turn.

This 2-vCPU machine (a Firecracker microVM on an AMD EPYC host) moves between two regimes
seconds apart. In the slow one, a two-thread onnxruntime session runs slower than a one-thread
session of the same model (the PP-OCRv5 recognizer's int8 model at batch 2: 24.5 ms and 63 ms
with two threads, 43 ms with one throughout, in one process over 40 s:
``python benchmarks/regime_probe.py``), and it does not slow every model alike: memory-bound
and short kernels suffer most (DequantizeLinear 6x, HardSigmoid and Mul 4x, QLinearConv 1.2x,
float Conv 1.4x), so an int8 model's ratio to its fp32 input moves with the regime (that
recognizer: 1.42x in the fast regime, 0.82x in the slow one; all-MiniLM-L6-v2: 1.9x and 1.5x).

The benchmarks keep their verdicts on every turn, interleaved; this module lets them also say
which turns ran in which regime. Before each turn, the fp32 model runs twice (the *canary*);
a turn whose canary's faster run takes more than :data:`SLOW_TURN` times the fastest canary
of the measurement is a slow turn. Ratios are then read over the fast turns and over the slow
turns apart, each tool against fp32 in the same turns' regime.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

#: a turn whose canary takes this many times the measurement's fastest canary or more is slow:
#: fp32 models ran 1.25-1.45x slower in the slow regime (all-MiniLM-L6-v2 9.0 against 11.6-13.6
#: ms, the PP-OCRv5 recognizer 37 against 53 ms), and a canary moves by 5 % turn to turn in one
CANARY_RUNS = 2
SLOW_TURN = 1.2


class Canary:
    """Times ``run()`` (a call running the fp32 model once) :data:`CANARY_RUNS` times per
    reading; the reading is the fastest (ms)."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self.readings: list[float] = []

    def read(self) -> float:
        best = float("inf")
        for _ in range(CANARY_RUNS):
            t = time.perf_counter()
            self._run()
            best = min(best, (time.perf_counter() - t) * 1e3)
        self.readings.append(best)
        return best

    def limit(self) -> float:
        """The canary time above which a turn is slow."""
        return SLOW_TURN * min(self.readings) if self.readings else float("inf")


def split_ratio(
    base: list[tuple[float, list[float]]],
    mine: list[tuple[float, list[float]]],
    limit: float,
    min_turns: int = 2,
) -> dict[str, Any]:
    """fp32's median over this tool's ratio in the fast turns and in the slow ones (each
    side's turns of that regime; None with fewer than ``min_turns`` turns on a side), and how
    many of this tool's turns were slow. ``base``/``mine``: (canary ms, that turn's times)."""
    out: dict[str, Any] = {"slow_turns": [sum(c > limit for c, _ in mine), len(mine)]}
    for name, slow in (("fast", False), ("slow", True)):
        a = [x for c, xs in base if (c > limit) == slow for x in xs]
        b = [x for c, xs in mine if (c > limit) == slow for x in xs]
        n_a = sum((c > limit) == slow for c, _ in base)
        n_b = sum((c > limit) == slow for c, _ in mine)
        ok = n_a >= min_turns and n_b >= min_turns
        out[name] = float(np.median(a) / np.median(b)) if ok else None
    return out
