"""Verification of candidates against the previous stage and the original.

- Exact candidates run on at most ``exact_runs`` runs of the verification feeds (a prefix:
  runs spread over the data, put first), whatever the size of ``--data``: float noise does not
  grow with the number of samples, and a rewrite that breaks an output does so on a few runs.
  Lossy candidates run on every run, since the user's budget (accuracy drop, cosine) is a
  statistic over all of them. A stage's outputs on every run are computed only when a lossy
  pass or the final accuracy needs them.
- When an exact candidate fails the fixed tolerance, the previous stage's own float noise is
  measured once (onnxruntime's run of it with graph optimizations on against off, on the same
  runs) and the candidate may differ by up to ``NOISE_FACTOR`` times that noise: a graph rewrite
  is not held to a tighter standard than the runtime's own fusions.
- A lossy pass that exists to make the model faster (``Pass.goal == "speed"``) must also be
  faster than the previous stage beyond noise (:func:`onnxopt.timing.race`), unless the user
  allows slower models.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import onnx

from onnxopt import phases
from onnxopt.data import Feeds
from onnxopt.defaults import NOISE_FACTOR
from onnxopt.errors import OnnxoptError, first_line
from onnxopt.model import structural_check
from onnxopt.runner import Runner, Runs
from onnxopt.summary import ModelSummary
from onnxopt.verify import Budget, Comparison, Exact, accuracy, compare

logger = logging.getLogger(__name__)


@dataclass
class Stage:
    """A verified model: the original, or the result of the last kept pass.

    Attributes:
        model: the model.
        summary: what it is made of.
        lossy: whether a lossy pass was kept on the way here.
        full: its outputs on every verification run, once computed.
        noise: its per-output float noise, once measured.
        vs_original: its outputs against the original's on every verification run, when its
            verification compared them (a lossy pass's stage).
    """

    model: onnx.ModelProto
    _outputs: Runs | Future
    summary: ModelSummary
    lossy: bool = False
    full: Runs | None = None
    noise: dict[str, float] | None = None
    vs_original: Comparison | None = None

    @property
    def outputs(self) -> Runs:
        """Outputs on the exact-verification runs (the original's may still be computing)."""
        if isinstance(self._outputs, Future):
            with phases.phase(phases.CHECKING):  # the original's runs, in a helper thread
                self._outputs = self._outputs.result()
        return self._outputs


@dataclass
class Checked:
    """A candidate's verification: the new stage (None when it failed), why it failed, its
    comparisons with the previous stage and the original, and notes (noise floor, latency)."""

    stage: Stage | None
    why: str = ""
    vs_previous: Comparison | None = None
    vs_original: Comparison | None = None
    notes: list[str] = field(default_factory=list)
    #: the candidate's accuracy, when labels gave one
    accuracy: float | None = None
    #: the candidate's task-metric score (``--metric``), when computed
    metric: float | None = None
    #: its time over the previous stage's, when a speed race measured it
    speed_ratio: float | None = None


class Verifier:
    """Runs and judges candidates for a :class:`~onnxopt.pipeline.PassManager`.

    Args:
        runner: onnxruntime sessions (shared with the passes).
        feeds: every verification run.
        exact_runs: how many runs exact candidates are verified on.
        budget: the user's budget against the original, for lossy candidates.
        metric_output: the output accuracy reads (None: the one holding scores).
        allow_slower: keep a lossy speed pass's candidate even if it is not faster.
    """

    def __init__(
        self,
        runner: Runner,
        feeds: Feeds,
        *,
        exact_runs: int | None,
        budget: Budget | None,
        metric_output: str | None = None,
        allow_slower: bool = False,
    ) -> None:
        self.runner = runner
        self.exact_feeds = feeds
        if exact_runs and exact_runs < len(feeds):
            # the exact runs are a prefix of the verification runs (a stage keeps its outputs
            # on them, and a lossy candidate's first ones stand for them), taken spread over
            # the data and put first
            feeds = feeds.spread_first(exact_runs)
            labels = feeds.labels[:exact_runs] if feeds.labels is not None else None
            self.exact_feeds = replace(feeds, runs=feeds.runs[:exact_runs], labels=labels)
        self.feeds = feeds
        self.budget = budget or Budget()
        self.metric_output = metric_output
        self.allow_slower = allow_slower
        self.exact = Exact()
        self.first: Stage | None = None
        #: the memory budget (bytes): the speed gate times the models apart above it
        self.max_memory: int | None = None
        #: ``--latency-batch``: the batch the speed gate times (None: the median-size run)
        self.latency_batch: int | None = None
        self._metric_ref: dict[int, float] = {}  # the original's score on the first n runs
        #: the last outputs scored (the list itself: its identity is the key) and their score
        self._metric_seen: list[tuple[Runs, float]] = []

    @property
    def subset(self) -> bool:
        return len(self.exact_feeds) < len(self.feeds)

    @property
    def ref(self) -> Runs:
        """The original's outputs on the exact-verification runs."""
        return self.first.outputs

    def full(self, stage: Stage) -> Runs:
        """``stage``'s outputs on every verification run (computed once)."""
        if stage.full is None:
            stage.full = (
                stage.outputs if not self.subset else self.runner.run(stage.model, self.feeds)
            )
        return stage.full

    @property
    def wants_accuracy(self) -> bool:
        """Accuracy is read from the labels, unless they serve a task metric only."""
        b = self.budget
        return self.feeds.labels is not None and (
            b.metric is None or b.max_accuracy_drop is not None
        )

    def accuracy(self, outputs: Runs) -> float:
        return accuracy(outputs, self.feeds.labels or [], self.metric_output)

    def metric(self, outputs: Runs) -> tuple[float, float] | None:
        """(original's score, ``outputs``' score) of the budget's task metric on the first
        ``len(outputs)`` runs; None without one. A failing callable raises MetricError."""
        m = self.budget.metric
        if m is None:
            return None
        n = len(outputs)
        labels = self.feeds.labels[:n] if self.feeds.labels is not None else None
        ref = self.full(self.first)[:n]
        if n not in self._metric_ref:
            self._metric_ref[n] = m(ref, labels)
        if all(a is b for a, b in zip(outputs, ref)):  # the original's own outputs: scored once
            return self._metric_ref[n], self._metric_ref[n]
        # the same outputs again (a kept stage's, scored when judged, then for the totals)
        for seen, score in self._metric_seen:
            if seen is outputs:
                return self._metric_ref[n], score
        score = m(outputs, labels)
        self._metric_seen = [(outputs, score), *self._metric_seen[:3]]
        return self._metric_ref[n], score

    # ------------------------------------------------------------------------------------
    def verify(
        self,
        candidate: onnx.ModelProto,
        stage: Stage,
        exact: bool,
        speed: bool = False,
        deployed: bool = False,
        known: Checked | None = None,
        prior: list[float] | tuple[float, ...] = (),
    ) -> Checked:
        """Check, run and compare ``candidate`` (exact: on the exact runs; lossy: on all).
        ``deployed``: a lossy candidate must also meet the budget with onnxruntime's graph
        optimizations on (see :attr:`onnxopt.contract.Pass.verify_deployed`). ``known``: the
        verdict this method gave ``candidate`` already without ``speed`` (a pass's precheck
        of the model it then returned): only the speed is judged. ``prior``: the race's
        rounds timed already (:attr:`onnxopt.contract.PassResult.timed_rounds`)."""
        if known is not None and known.stage is not None:
            if speed and not self.allow_slower:
                known = self.judge_speed(candidate, stage, known, prior=prior)
                if known.why:
                    known.stage = None
            return known
        feeds = self.exact_feeds if exact else self.feeds
        try:
            inferred = structural_check(candidate)
            # building the session (mostly one thread) may overlap the reference's runs, but
            # two sessions never run at once: both would get half the cores
            session = self.runner.session(candidate)
            _ = self.ref
            outputs = self.runner.run_session(session, feeds)
        except OnnxoptError as e:
            return Checked(None, str(e))
        except Exception as e:  # noqa: BLE001
            return Checked(None, f"{type(e).__name__}: {first_line(e)}")
        checked = self._judge_exact(outputs, stage) if exact else self._judge_lossy(outputs, stage)
        if not checked.why and deployed and not exact:
            checked = self._judge_deployed(candidate, checked)
        if not checked.why and speed and not self.allow_slower:
            checked = self.judge_speed(candidate, stage, checked, prior=prior)
        if checked.why:
            self.runner.forget(session)  # a rejected candidate's session is never run again
            checked.stage = None
            return checked
        summary = ModelSummary.of(candidate, inferred)
        head = outputs[: len(self.exact_feeds)]
        checked.stage = Stage(
            candidate,
            head,
            summary,
            stage.lossy or not exact,
            full=None if exact else outputs,
            vs_original=None if exact else checked.vs_original,
        )
        return checked

    def _judge_exact(self, outputs: Runs, stage: Stage) -> Checked:
        """Within the exact tolerance (or the noise floor) of the previous stage, and of the
        original while no lossy pass was kept (else within the budget)."""
        from_original = stage.outputs is self.ref  # then one comparison serves both
        cmp_prev = compare(stage.outputs, outputs)
        cmp_orig = cmp_prev if from_original else compare(self.ref, outputs)
        out = Checked(None, "", cmp_prev, cmp_orig)
        v = self.exact.check(stage.outputs, outputs)
        if not v:
            noise = self.noise(stage)
            v = self.exact.widened(v, noise)
            if not v:
                out.why = "outputs changed: " + v.reason
                return out
            out.notes.append(
                f"within {NOISE_FACTOR}x the previous model's own float noise: "
                + _noise_text(noise)
            )
        if stage.lossy:
            return self._budget(out, outputs[: len(self.exact_feeds)], exact_runs=True)
        if not from_original:
            v = self.exact.check(self.ref, outputs, self.noise(self.first) if out.notes else None)
            if not v:
                out.why = "drifted from the original: " + v.reason
        return out

    def _judge_lossy(self, outputs: Runs, stage: Stage) -> Checked:
        cmp_prev = compare(stage.outputs, outputs[: len(self.exact_feeds)])
        out = Checked(None, "", cmp_prev, compare(self.full(self.first), outputs))
        return self._budget(out, outputs, exact_runs=False)

    def _budget(self, out: Checked, outputs: Runs, exact_runs: bool) -> Checked:
        """The user's budget against the original (on the exact runs, or on all runs)."""
        ref = self.ref if exact_runs else self.full(self.first)
        cmp = out.vs_original if out.vs_original is not None else compare(ref, outputs)
        acc = None
        if self.wants_accuracy and not exact_runs:
            acc = (self.accuracy(ref), self.accuracy(outputs))
            out.accuracy = acc[1]
        met = self.metric(outputs)
        if met is not None:
            out.metric = met[1]
        v = self.budget.check(cmp, acc, met)
        if not v:
            out.why = "over budget: " + v.reason
        return out

    def _judge_deployed(self, candidate: onnx.ModelProto, out: Checked) -> Checked:
        """The budget again, on the candidate's outputs with onnxruntime's optimizations on
        (the outputs kept for later stages stay the literal graph's)."""
        try:
            outputs = self.runner.run(candidate, self.feeds, optimized=True)
        except OnnxoptError as e:
            out.why = f"fails with onnxruntime's optimizations on: {e}"
            return out
        cmp = compare(self.full(self.first), outputs)
        seen = self._budget(Checked(None, "", None, cmp), outputs, exact_runs=False)
        if seen.why:
            out.why = seen.why + " (with onnxruntime's graph optimizations on)"
        else:
            out.notes.append(f"with onnxruntime's graph optimizations on: cosine {cmp.cosine:.6f}")
        return out

    def judge_speed(
        self,
        candidate: onnx.ModelProto,
        stage: Stage,
        out: Checked | None = None,
        prior: list[float] | tuple[float, ...] = (),
    ) -> Checked:
        """A speed pass's candidate must be faster than the previous stage beyond noise.
        ``prior``: rounds the pass timed on the same feed (:func:`onnxopt.timing.race`)."""
        out = out if out is not None else Checked(None)
        from onnxopt.timing import race

        feed = self.exact_feeds.timing_feed()
        r = race(stage.model, candidate, feed, max_bytes=self.max_memory, prior=prior)
        out.speed_ratio = r.ratio
        at = ""
        if self.latency_batch is not None:
            at = f" at batch {self.latency_batch}"
        if r.b_faster:
            out.notes.append(f"faster{at}: " + r.describe())
        else:
            out.why = f"not faster than its input{at}: {r.describe()} (--allow-slower keeps it)"
        return out

    def noise(self, stage: Stage) -> dict[str, float]:
        """``stage``'s float noise per output: max |optimizations on - off| (measured once)."""
        if stage.noise is None:
            try:
                optimized = self.runner.run(stage.model, self.exact_feeds, optimized=True)
                stats = compare(stage.outputs, optimized).outputs
                stage.noise = {k: s.max_abs for k, s in stats.items() if s.max_abs < float("inf")}
            except OnnxoptError as e:
                logger.info("noise floor not measured: %s", e)
                stage.noise = {}
        return stage.noise


def _noise_text(noise: dict[str, float]) -> str:
    shown = ", ".join(f"'{k}' {v:.2g}" for k, v in list(noise.items())[:4])
    return f"onnxruntime's optimizations on vs off differ by {shown}"
