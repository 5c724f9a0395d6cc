"""Judging a quantized candidate against the float model with the user's budget.

:class:`Judge` runs a candidate on the fallback runs and checks the budget (cosine, accuracy,
task metric); the mixed-precision planner (:mod:`.mixed`) asks it about every model it tries.
The verifier holds a lossy candidate to the budget twice, as the literal graph and with
onnxruntime's graph optimizations on (as deployed), so the judge asks both, deployed first:
there a QDQ model runs int8 kernels, about 4x faster than its literal Q/DQ arithmetic
(MiniLM, 64 runs: 0.48 s against 1.9 s), and most candidates the search tries fail there
already.
:func:`sqnr_db` is the signal-to-quantization-noise ratio of whole-model outputs:
    ``SQNR = 10·log10( Σ y² / Σ (y − ŷ)² )``  (dB).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt.data import Feeds
from onnxopt.errors import OnnxoptError
from onnxopt.runner import Runner
from onnxopt.verify import accuracy, compare

logger = logging.getLogger(__name__)


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
    #: with a feed here, every scored candidate is timed (the report's trade-off plot)
    timing_feed: dict[str, np.ndarray] | None = None
    #: one row per scored candidate: label, ok, cosine, accuracy, latency_ms
    history: list[dict] = field(default_factory=list)
    #: also hold the candidate to the budget with onnxruntime's optimizations on, first
    deployed: bool = True

    def check(self, model: onnx.ModelProto, label: str = "") -> tuple[bool, str]:
        good, why, _ = self.score(model, label)
        return good, why

    def score(
        self, model: onnx.ModelProto, label: str = "", *, record: bool = True
    ) -> tuple[bool, str, float]:
        """(within budget, why not, the budget's headline number: the task metric, else
        accuracy with labels, else the lowest cosine); ``record`` adds a row to ``history``."""
        self.evaluations += 1
        if self.deployed:
            try:
                deployed = self.runner.run(model, self.feeds, optimized=True)
            except OnnxoptError as e:  # the verifier would refuse it the same way
                return False, f"fails with onnxruntime's optimizations on: {e}", -math.inf
            ok, why, head, comp, acc = self._verdict(deployed)
            if not ok:
                why += " (with onnxruntime's graph optimizations on)"
                if record:
                    self._record(model, label, False, comp, acc)
                return False, why, head
        ok, why, head, comp, acc = self._verdict(self.runner.run(model, self.feeds))
        if record:
            self._record(model, label, ok, comp, acc)
        return ok, why, head

    def _verdict(self, runs: list[dict[str, np.ndarray]]) -> tuple:
        """(within budget, why not, headline number, comparison, (ref, cand) accuracy)."""
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
        return bool(verdict.ok), verdict.reason, float(head), comp, acc

    def _record(self, model: onnx.ModelProto, label: str, ok: bool, comp, acc) -> None:
        from onnxopt.candidates import latency_or_none

        timed = self.timing_feed is not None
        self.history.append(
            {
                "label": label or f"candidate {self.evaluations}",
                "ok": ok,
                "cosine": comp.cosine if comp.outputs else None,
                "accuracy": acc[1] if acc else None,
                "latency_ms": latency_or_none(model, self.timing_feed, label) if timed else None,
            }
        )
