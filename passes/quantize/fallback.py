"""Accuracy-aware fallback: return the most sensitive quantized nodes to float.

Sensitivity of a site ``k`` is the SQNR of the model outputs with only ``k`` quantized:
    ``SQNR_k = 10·log10( Σ y² / Σ (y − ŷ_k)² )``  (dB; lower = more sensitive).
Sites are ranked by ascending SQNR and the smallest prefix ``F`` of the ranking whose return to
float makes the whole model meet the budget is searched by doubling (1, 2, 4, ...) and then
halving the last interval (binary search), assuming more float nodes never hurt.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt.data import Feeds
from onnxopt.runner import Runner
from onnxopt.verify import accuracy, compare

logger = logging.getLogger(__name__)

Build = Callable[[set[str]], onnx.ModelProto]


def sqnr_db(ref_runs: list[dict[str, np.ndarray]], runs: list[dict[str, np.ndarray]]) -> float:
    """Signal-to-quantization-noise ratio over every float output of every run."""
    sig = noise = 0.0
    for r, c in zip(ref_runs, runs, strict=False):
        for k, v in r.items():
            if np.asarray(v).dtype.kind != "f":
                continue
            a, b = np.asarray(v, np.float64), np.asarray(c[k], np.float64)
            sig += float(np.sum(a * a))
            noise += float(np.sum((a - b) ** 2))
    if noise == 0.0:
        return math.inf
    if sig == 0.0:
        return -math.inf
    return 10.0 * math.log10(sig / noise)


@dataclass
class Judge:
    """Checks a candidate against the float reference with the user's Budget."""

    runner: Runner
    feeds: Feeds
    reference: list[dict[str, np.ndarray]]
    budget: object
    ref_accuracy: float | None = None
    evaluations: int = 0
    ref_metric: float | None = None

    def check(self, model: onnx.ModelProto) -> tuple[bool, str]:
        good, why, _ = self.score(model)
        return good, why

    def score(self, model: onnx.ModelProto) -> tuple[bool, str, float]:
        """(within budget, why not, the budget's headline number: the task metric, else
        accuracy with labels, else the lowest cosine)."""
        self.evaluations += 1
        runs = self.runner.run(model, self.feeds)
        comp = compare(self.reference, runs)
        acc = met = None
        if self.feeds.labels is not None and self.ref_accuracy is not None:
            acc = (self.ref_accuracy, accuracy(runs, self.feeds.labels))
        task = getattr(self.budget, "metric", None)
        if task is not None:
            if self.ref_metric is None:
                self.ref_metric = task(self.reference, self.feeds.labels)
            met = (self.ref_metric, task(runs, self.feeds.labels))
        verdict = self.budget.check(comp, acc, met)
        head = met[1] if met else acc[1] if acc else comp.cosine
        return bool(verdict.ok), verdict.reason, float(head)


@dataclass
class FallbackResult:
    float_sites: list[str] = field(default_factory=list)
    ranking: list[tuple[str, float]] = field(default_factory=list)
    met: bool = True
    reason: str = ""
    evaluations: int = 0


def rank_sites(
    build: Build,
    sites: list[str],
    runner: Runner,
    feeds: Feeds,
    reference: list[dict[str, np.ndarray]],
    progress: Callable[[str, int, int], None] | None = None,
) -> list[tuple[str, float]]:
    """(site, SQNR dB) with each site quantized alone, most sensitive first."""
    out = []
    for i, s in enumerate(sites):
        runs = runner.run(build({s}), feeds)
        out.append((s, sqnr_db(reference, runs)))
        if progress is not None:
            progress("sensitivity", i + 1, len(sites))
    out.sort(key=lambda kv: kv[1])
    return out


def search_fallback(
    build: Build,
    sites: list[str],
    judge: Judge,
    ranking: list[tuple[str, float]],
    progress: Callable[[str, int, int], None] | None = None,
) -> FallbackResult:
    """Smallest prefix of ``ranking`` kept in float so that the budget holds."""
    order = [s for s, _ in ranking]
    n = len(order)

    def ok_with(k: int) -> bool:
        floats = set(order[:k])
        good, _ = judge.check(build({s for s in sites if s not in floats}))
        if progress is not None:
            progress("fallback", k, n)
        return good

    lo, hi, k = 0, None, 1
    while k <= n:
        if ok_with(k):
            hi = k
            break
        lo, k = k, min(n, k * 2) if k < n else n + 1
    if hi is None:
        return FallbackResult(
            order,
            ranking,
            met=False,
            reason="budget not met even with every site in float",
            evaluations=judge.evaluations,
        )
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok_with(mid):
            hi = mid
        else:
            lo = mid
    return FallbackResult(order[:hi], ranking, met=True, evaluations=judge.evaluations)
