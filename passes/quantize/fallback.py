"""Judging a quantized candidate against the float model with the user's budget.

:class:`Judge` runs a candidate on the fallback runs and checks the budget (cosine, accuracy,
task metric); the mixed-precision planner (:mod:`.mixed`) asks it about every model it tries.
The verifier holds a lossy candidate to the budget twice, as the literal graph and with
onnxruntime's graph optimizations on (as deployed), so the judge asks both, deployed first:
there a QDQ model runs int8 kernels, about 4x faster than its literal Q/DQ arithmetic
(MiniLM, 64 runs: 0.48 s against 1.9 s), and most candidates the search tries fail there
already.

A candidate also has to meet the cosine budget on each half of the runs, not only on their
pool: the verifier judges it on runs the search never saw (a held-out half of the data),
and a candidate that passes only on the pool sits within sampling noise of the budget. On
MiniLM at cosine 0.998 the search's choice scored 0.99832 on the calibration runs and 0.9979
on the held-out ones; the pipeline then bisected its sites for 250 s.
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
from onnxopt.verify import Comparison, accuracy, compare

logger = logging.getLogger(__name__)

#: runs per half, at least, for the split-half check of the cosine budget
MIN_HALF = 8


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
    #: one row per scored candidate: label, ok, cosine, accuracy, metric (the task metric's
    #: value, None without one), latency_ms
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
        accuracy with labels, else the lowest cosine); ``record`` adds a row to ``history``.
        Deployed first, then literal (:meth:`deployed_score`, :meth:`literal_score`)."""
        ok, why, head = self.deployed_score(model, label, record=record)
        if ok and self.deployed:
            ok, why, head = self.literal_score(model, label)
        return ok, why, head

    def reference_head(self) -> float:
        """The float model's own headline number (its task metric, accuracy, or cosine 1)."""
        if getattr(self.budget, "metric", None) is not None:
            return self._reference_metric()
        return float(self.ref_accuracy) if self.ref_accuracy is not None else 1.0

    def target(self) -> float | None:
        """The headline number (:meth:`score`'s third) the budget needs at least, when one
        criterion decides it: the task metric's floor, the accuracy's, or the minimum
        cosine; None otherwise."""
        b = self.budget
        if getattr(b, "metric", None) is not None:
            return self._reference_metric() - b.max_metric_drop
        if self.feeds.labels is not None and self.ref_accuracy is not None:
            drop = getattr(b, "max_accuracy_drop", None)
            return self.ref_accuracy - drop if drop is not None else None
        return getattr(b, "min_cosine", None)

    def _reference_metric(self) -> float:
        """The task metric of the float model's outputs (computed once)."""
        if self.ref_metric is None:
            self.ref_metric = self.budget.metric(self.reference, self.feeds.labels)
        return float(self.ref_metric)

    def deployed_score(
        self, model: onnx.ModelProto, label: str = "", *, record: bool = True
    ) -> tuple[bool, str, float]:
        """:meth:`score` with onnxruntime's optimizations on only (the literal graph when
        :attr:`deployed` is off): the search's verdict, confirmed by :meth:`literal_score`."""
        self.evaluations += 1
        if not self.deployed:
            ok, why, head, comp, acc = self._verdict(self.runner.run(model, self.feeds))
        else:
            try:
                runs = self.runner.run(model, self.feeds, optimized=True)
            except OnnxoptError as e:  # the verifier would refuse it the same way
                return False, f"fails with onnxruntime's optimizations on: {e}", -math.inf
            ok, why, head, comp, acc = self._verdict(runs)
            if not ok:
                why += " (with onnxruntime's graph optimizations on)"
        if record:
            self._record(model, label, ok, comp, acc, head)
        return ok, why, head

    def literal_score(self, model: onnx.ModelProto, label: str = "") -> tuple[bool, str, float]:
        """The budget on the literal graph (Q/DQ arithmetic in float), as the verifier also
        holds it. A candidate :meth:`deployed_score` recorded keeps its row in ``history``
        (marked outside the budget when this fails); one scored here alone (the search after
        a refused confirmation) gets its row here."""
        ok, why, head, comp, acc = self._verdict(self.runner.run(model, self.feeds))
        key = label or f"candidate {self.evaluations}"  # as :meth:`_record` names it
        rows = [row for row in self.history if row["label"] == key]
        if not rows:
            self._record(model, label, ok, comp, acc, head)
        elif not ok:  # the candidate's row no longer reads "within budget"
            rows[-1]["ok"] = False
        return ok, (why + " (the literal graph)" if not ok else why), head

    def _verdict(self, runs: list[dict[str, np.ndarray]]) -> tuple:
        """(within budget, why not, headline number, comparison, (ref, cand) accuracy)."""
        b = self.budget
        # the errors and the top-1 agreement only for a budget on them: the cosine, the
        # accuracy or the task metric decide the rest (the search's scores need no more)
        errors = (
            getattr(b, "max_abs_err", None) is not None
            or getattr(b, "min_top1_agreement", None) is not None
        )
        comp = compare(self.reference, runs, errors=errors)
        acc = met = None
        if self.feeds.labels is not None and self.ref_accuracy is not None:
            acc = (self.ref_accuracy, accuracy(runs, self.feeds.labels))
        task = getattr(self.budget, "metric", None)
        if task is not None:
            met = (self._reference_metric(), task(runs, self.feeds.labels))
        verdict = self.budget.check(comp, acc, met)
        head = met[1] if met else acc[1] if acc else comp.cosine
        if verdict.ok:
            why = self._halves(runs, comp)
            if why:
                return False, why, float(head), comp, acc
        return bool(verdict.ok), verdict.reason, float(head), comp, acc

    def _halves(self, runs: list[dict[str, np.ndarray]], comp: Comparison) -> str:
        """Why the cosine budget fails on one half of the runs ("" when it holds on both, or
        there is no cosine budget or too few runs to split). The halves' cosines come from
        ``comp``'s per-run dot products, without comparing each half again (comparing a
        PP-OCRv5 recognizer's outputs takes ~0.6 s); an output ``comp`` has none for (a shape
        or non-finite mismatch) read cosine 0 pooled and never gets here."""
        min_cos = getattr(self.budget, "min_cosine", None)
        n = len(runs) // 2
        if min_cos is None or n < MIN_HALF:
            return ""
        for half, part in (("first", slice(0, n)), ("second", slice(n, None))):
            bad = [(k, c) for k, c in comp.cosines_over(part).items() if c < min_cos]
            if bad:
                return (
                    f"'{bad[0][0]}': cosine {bad[0][1]:.4f} < {min_cos} on the {half} half "
                    "of the runs (within sampling noise of the budget)"
                )
        return ""

    def _record(self, model: onnx.ModelProto, label: str, ok: bool, comp, acc, head: float) -> None:
        from onnxopt.candidates import latency_or_none

        timed = self.timing_feed is not None
        self.history.append(
            {
                "label": label or f"candidate {self.evaluations}",
                "ok": ok,
                "cosine": comp.cosine if comp.outputs else None,
                "accuracy": acc[1] if acc else None,
                "metric": head if getattr(self.budget, "metric", None) is not None else None,
                "latency_ms": latency_or_none(model, self.timing_feed, label) if timed else None,
            }
        )
