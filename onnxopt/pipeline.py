"""PassManager: run passes, check, verify, roll back, report.

(Over the house's ~450 lines on purpose: the manager's steps share one run's state; what has
no state lives in bisection.py, verifier.py, candidates.py and memory.py.)

For every pass (docs/ARCHITECTURE.md, "Verification and rollback"):
1. the original's reference outputs are computed once (onnxruntime, optimizations off);
2. the pass runs on a fresh copy of the last good stage; the candidate goes through
   ``onnx.checker`` and strict shape inference, then runs in onnxruntime;
3. an exact pass must match the previous stage within :class:`~onnxopt.verify.Exact`; every pass
   is also compared with the original (exact tolerance until a lossy pass was kept, then the
   user's :class:`~onnxopt.verify.Budget`);
4. a failing pass is rolled back (or raises with ``strict``); a failing pass that listed its
   sites is bisected (:mod:`onnxopt.bisection`): every site that verifies is kept.

Consecutive exact passes run as one *batch*: they rewrite one working copy in turn
(:class:`~onnxopt.contract.Working`) and are verified once. If the batch fails, its passes are
re-run one at a time with their own checks. This keeps verification cheap on large models
without weakening it.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnx

from onnxopt import memory, phases, weights
from onnxopt.bisection import Trial, bisect_sites
from onnxopt.candidates import candidate_row, input_row, mark_chosen
from onnxopt.contract import Pass, PassContext, PassResult, Working
from onnxopt.data import Feeds, batch_feed, representative
from onnxopt.defaults import (
    BISECT_SPEED_RATIO,
    EXACT_VERIFY_RUNS,
    MAX_BISECT_SECONDS,
    MAX_BISECT_TRIALS,
)
from onnxopt.errors import MetricError, OnnxoptError, OptionError, PipelineError, first_line
from onnxopt.model import load_model
from onnxopt.report import Metrics, PassReport, PipelineReport, ProgressSink, summary_dict
from onnxopt.runner import Runner
from onnxopt.summary import ModelSummary
from onnxopt.synth import get_feeds
from onnxopt.verifier import Checked, Stage, Verifier
from onnxopt.verify import Budget, Comparison, compare, metric_output

logger = logging.getLogger(__name__)


def validate_order(passes: Sequence[Pass], order: Sequence[tuple[str, str]]) -> None:
    """Refuse a pass list that breaks an ordering constraint, before anything runs."""
    for i, late in enumerate(passes):
        for early in passes[i + 1 :]:
            for a, b in order:
                if a in early.all_tags() and b in late.all_tags():
                    raise OptionError(
                        f"'{late.name}' cannot run before '{early.name}': "
                        f"{a} passes must run before {b} passes"
                    )


class PassManager:
    """Runs passes with verification and rollback.

    The manager knows no pass by name: it gets instances (``onnxopt.passes.registry.manager``
    resolves names, options and the ordering constraints between families).

    Args:
        passes: Pass instances, in order.
        order: ordering constraints between pass tags, checked before anything runs:
            ``(a, b)`` means every ``a`` pass runs before every ``b`` pass.
        budget: the user's budget against the original; defaults to ``Budget()`` (cosine >= 0.99)
            for lossy passes. Exact passes are always held to the exact tolerance.
        target: "onnx" (standard ops only) or "onnxruntime" (contrib ops allowed).
        strict: raise :class:`PipelineError` on the first failing pass instead of rolling back.
        progress: a :class:`~onnxopt.report.ProgressSink` (the CLI passes a rich one).
        verify_runs: use at most this many feed runs for verification (None: all).
        exact_runs: verify exact passes on at most this many of them (None: all); lossy
            passes are verified on all of them.
        metric_output: the output accuracy and top-1 read (None: the one holding scores).
        allow_slower: keep a lossy speed pass (int8, pruning) even when its model is not
            faster than its input; by default it is rolled back.
        batch_exact: run consecutive exact passes as one batch, verified once.
        holdout: with lossy passes and no separate calibration feeds, learn from every other
            run and verify on the rest.
        measure_candidates: time every candidate a lossy pass or its bisection tries, for the
            report's trade-off plot (``PassReport.details["candidates"]``).
        max_memory: the memory budget (bytes, ``"8G"``, ``"60%"``; default 60 % of RAM):
            above it, fewer verification runs and block-by-block sessions
            (:class:`onnxopt.memory.Plan`).
        latency_batch: judge speed (the speed gate, int8's per-layer placement) on one input
            of this many samples, the runs stacked (:func:`onnxopt.data.batch_feed`), not on
            the median-size run (:func:`onnxopt.data.representative`): int8 that does not pay
            at batch 1 can at batch 32.
    """

    #: the running pass's memo (:attr:`PassContext.memo`), None between passes
    _memo: dict[str, Any] | None = None

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        order: Sequence[tuple[str, str]] = (),
        budget: Budget | None = None,
        target: str = "onnx",
        strict: bool = False,
        progress: ProgressSink | None = None,
        verify_runs: int | None = None,
        exact_runs: int | None = EXACT_VERIFY_RUNS,
        metric_output: str | None = None,
        allow_slower: bool = False,
        batch_exact: bool = True,
        holdout: bool = True,
        measure_candidates: bool = False,
        max_memory: int | str | None = None,
        latency_batch: int | None = None,
    ) -> None:
        if target not in ("onnx", "onnxruntime"):
            raise OptionError(f"--target must be 'onnx' or 'onnxruntime', not {target!r}")
        bad = [p for p in passes if not isinstance(p, Pass)]
        if bad:
            raise TypeError(
                f"PassManager takes Pass instances, not {bad[0]!r}: resolve names "
                "with onnxopt.passes.registry.manager"
            )
        self.passes: list[Pass] = list(passes)
        if not self.passes:
            raise OptionError("no passes to run")
        validate_order(self.passes, order)
        for p in self.passes:
            if why := p.target_error(target):
                raise OptionError(why)
        self.budget = budget
        self.target = target
        self.strict = strict
        self.progress = progress
        self.verify_runs = verify_runs
        self.exact_runs = exact_runs
        self.metric_output = metric_output
        self.allow_slower = allow_slower
        self.batch_exact = batch_exact
        self.holdout = holdout
        self.measure_candidates = measure_candidates
        self.max_memory = memory.parse_budget(max_memory)
        self.latency_batch = latency_batch
        self.runner = Runner()
        self._prechecked: _Prechecked | None = None

    def __repr__(self) -> str:
        names = [p.name for p in getattr(self, "passes", [])]
        return f"PassManager({names}, target={getattr(self, 'target', '?')!r})"

    # ----------------------------------------------------------------------------------------
    def run(
        self, model: Any, feeds: Feeds | None = None, calibration: Feeds | None = None
    ) -> tuple[onnx.ModelProto, PipelineReport]:
        """Run the pipeline on ``model`` (path, bytes or ModelProto; never modified).

        Args:
            model: the original.
            feeds: verification inputs (labels enable accuracy budgets); synthesized if None.
            calibration: inputs the passes learn from (calibration, pruning importance,
                reconstruction, distillation); defaults to ``feeds``.
        """
        with phases.recording() as rec:
            model, report = self._run(model, feeds, calibration)
        report.time_breakdown, report.time_calls = rec.breakdown(), dict(rec.calls)
        return model, report

    def _run(
        self, model: Any, feeds: Feeds | None, calibration: Feeds | None
    ) -> tuple[onnx.ModelProto, PipelineReport]:
        t0 = time.perf_counter()
        # passes work on copies (Working), so the caller's ModelProto is read, never modified,
        # and need not be copied here
        original = load_model(model, copy=False)
        if weights.wants_mapping(original):  # a large in-memory model: weights spilled once
            original = weights.externalize(original)
        fit = self._fit(original)
        if feeds is None:
            feeds = get_feeds(original)
        if self.latency_batch is not None or feeds.runs:
            # one input for every speed judgement: the deployment batch, else the median-size
            # run of all the data. The passes learn from one half and the gate judges on the
            # other: each half's own run timed different inputs (the PP-OCRv5 detector's int8
            # placement was chosen 16 % faster on a 35 ms page and its race, on an 11 ms one,
            # read 0.99x after a 40 s search)
            timing = (
                batch_feed(original, feeds, self.latency_batch)
                if self.latency_batch is not None
                else representative(feeds.runs)
            )
            feeds = dataclasses.replace(feeds, timing=timing)
            if calibration is not None:
                calibration = dataclasses.replace(calibration, timing=timing)
        report = PipelineReport(
            feeds=feeds.source
            + (" (synthesized)" if feeds.synthesized and "synth" not in feeds.source else ""),
            budget=(self.budget or Budget()).describe(),
            target=self.target,
        )
        report.notes.extend(feeds.notes + fit.notes)
        self._original = original
        self.verifier = v = self._verifier(self._split_feeds(feeds, calibration, report), report)
        summary = ModelSummary.of(original)
        report.original = summary_dict(summary)
        if v.budget.metric is not None or v.wants_accuracy:
            # the task metric or the accuracy reads the original's outputs on every run now:
            # one pass over them gives the exact runs too (a prefix), where a helper thread
            # running that prefix at the same time would run it twice, each run on half the
            # cores (on the PP-OCRv5 recognizer 1.2 s + 2.6 s against 2.2 s for one pass)
            full = self._reference(original, fit.two_sessions, v.feeds)
            stage = Stage(original, full[: len(v.exact_feeds)], summary, full=full)
        else:
            # the reference runs in onnxruntime (which releases the GIL) while the first
            # passes rewrite the graph in Python; the first verification waits for it
            pool = ThreadPoolExecutor(max_workers=1)
            ref_future = pool.submit(self._reference, original, fit.two_sessions, v.exact_feeds)
            pool.shutdown(wait=False)
            stage = Stage(original, ref_future, summary)
        v.first = stage
        if self.verifier.budget.metric is not None:  # a broken --metric stops here, in one line
            report.metric = str(self.verifier.budget.metric)
            report.metric_original = self.verifier.metric(self.verifier.full(stage))[0]
        if self.verifier.wants_accuracy:  # labels that do not fit the outputs stop here too
            report.accuracy_original = self.verifier.accuracy(self.verifier.full(stage))
        stage = self._run_passes(stage, report)
        self._finish(report, stage)
        report.seconds = time.perf_counter() - t0
        report.peak_rss_mb = round(memory.high_water() / memory.MiB, 1)
        self.runner.clear()  # sessions hold a copy of the weights; the caller saves next
        return stage.model, report

    def _fit(self, original: onnx.ModelProto) -> memory.Plan:
        """Runs and block size within --max-memory (notes say what was reduced)."""
        fit = memory.Plan(original, self.max_memory)
        self._exact_runs, self._verify_runs = self.exact_runs, self.verify_runs
        if fit.exact_runs is not None:
            self._exact_runs = min(fit.exact_runs, self.exact_runs or fit.exact_runs)
            self._verify_runs = min(fit.verify_runs, self.verify_runs or fit.verify_runs)
        self.runner.block_bytes = fit.block_bytes
        return fit

    def _reference(self, original: onnx.ModelProto, keep_session: bool, feeds: Feeds) -> Any:
        """The original's outputs on ``feeds``; its session is freed unless two sessions fit
        the budget."""
        outputs = self.runner.run(original, feeds)
        if not keep_session:
            self.runner.forget_model(original)
        return outputs

    def _verifier(self, vfeeds: Feeds, report: PipelineReport) -> Verifier:
        """The verifier, and the report's account of what is verified on what."""
        if self.metric_output is not None and vfeeds.runs:
            metric_output(
                dict.fromkeys(o.name for o in self._original.graph.output), self.metric_output
            )  # a one-line error for an unknown name
        v = Verifier(
            self.runner,
            vfeeds,
            exact_runs=self._exact_runs,
            budget=self.budget,
            metric_output=self.metric_output,
            allow_slower=self.allow_slower,
        )
        v.max_memory = self.max_memory
        v.latency_batch = self.latency_batch
        report.verified_on = {"exact": len(v.exact_feeds), "lossy": len(vfeeds)}
        if v.subset and any(p.exact for p in self.passes):
            report.notes.append(
                f"exact passes verified on {len(v.exact_feeds)} of "
                f"{len(vfeeds)} runs; lossy passes and the totals on all"
            )
        return v

    def _split_feeds(
        self, feeds: Feeds, calibration: Feeds | None, report: PipelineReport
    ) -> Feeds:
        """Set the feeds passes learn from (``self._calib``); return the verification feeds."""
        verify_on = feeds
        self._calib = calibration if calibration is not None else feeds
        if calibration is not None:
            report.notes.append(
                f"passes learn from {calibration.source}; verified on {feeds.source}"
            )
        elif self.holdout and any(not p.exact for p in self.passes) and len(feeds) >= 4:
            # a lossy pass that learns from the data it is judged on can overfit (a ridge refit
            # on 8 runs looks perfect on those 8): learn on every other run, verify on the rest
            # (not the first half: data saved by class or by source would split by it)
            self._calib, verify_on = feeds.split(0.5, spread=True)
            report.notes.append(
                f"lossy passes learn from {len(self._calib)} runs (every other one) and are "
                f"verified on the other {len(verify_on)} (give --calib-data to use separate data)"
            )
        return verify_on.subset(self._verify_runs) if self._verify_runs else verify_on

    def _run_passes(self, stage: Stage, report: PipelineReport) -> Stage:
        if self.progress:
            self.progress.start(len(self.passes))
        try:
            i = 0
            while i < len(self.passes):
                batch = self._next_batch(i)
                with memory.PeakMeter() as self._meter:  # each pass's report reads it
                    stage = self._run_batch(batch, i, stage, report)
                i += len(batch)
        finally:
            if self.progress:
                self.progress.stop()
        return stage

    def _finish(self, report: PipelineReport, stage: Stage) -> None:
        """The pipeline's totals: the final model against the original, on every run when a
        lossy pass was kept or labels give an accuracy (else on the exact runs)."""
        v = self.verifier
        whole = stage.lossy or v.feeds.labels is not None
        ref = v.full(v.first) if whole else v.ref
        out = v.full(stage) if whole else stage.outputs
        if v.wants_accuracy:
            report.metric_output = metric_output(out[0], self.metric_output) if out else None
            if report.accuracy_original is None:  # read at the start when labels were given
                report.accuracy_original = v.accuracy(ref)
            report.accuracy_final = v.accuracy(out)
        report.final = summary_dict(stage.summary)
        # a lossy stage's verification compared the same runs already (0.35 s a recognizer)
        same = whole and stage.vs_original is not None
        report.final_vs_original = _metrics(stage.vs_original if same else compare(ref, out))
        if v.budget.metric is not None:
            report.metric_final = v.metric(v.full(stage))[1]

    def _next_batch(self, i: int) -> list[Pass]:
        """Consecutive exact passes run as one batch, verified once (a pass that may convert
        the opset goes alone)."""
        first = self.passes[i]
        if not self.batch_exact or not first.exact or first.opset_wanted:
            return [first]
        batch = [first]
        for p in self.passes[i + 1 :]:
            if not p.exact or p.opset_wanted:
                break
            batch.append(p)
        return batch

    def _ctx(
        self, p: Pass, site_filter: set[str] | None = None, stage: Stage | None = None
    ) -> PassContext:
        def prog(what: str, done: int, total: int) -> None:
            if self.progress:
                self.progress.update(what, done, total)

        precheck = None
        if stage is not None and not p.exact and not site_filter:
            # a lossy pass's first run may ask the verifier early (never a bisection trial,
            # whose sites the manager chooses): the verdict _verify would give, speed aside
            def precheck(model: onnx.ModelProto, stage: Stage = stage) -> str:
                checked = self._verify(model, stage, p, speed=False)
                if not checked.why:  # the pass may return this very model: see _judge_candidate
                    self._prechecked = _Prechecked.of(model, stage, checked)
                return checked.why

        return PassContext(
            feeds=self._calib,
            target=self.target,
            original=self._original,
            site_filter=site_filter,
            progress=prog,
            budget=self.budget,
            runner=self.runner,
            measure_candidates=self.measure_candidates,
            allow_slower=self.allow_slower,
            memo=self._memo,
            precheck=precheck,
        )

    # ----------------------------------------------------------------------------------------
    def _run_batch(
        self, batch: list[Pass], start: int, stage: Stage, report: PipelineReport
    ) -> Stage:
        """Several exact passes on one working copy, verified once; one by one if it fails."""
        if len(batch) == 1:
            return self._run_one(batch[0], start, stage, report)
        t0 = time.perf_counter()
        work = Working(stage.model)
        results: list[tuple[Pass, PassResult]] = []
        for k, p in enumerate(batch):
            if self.progress:
                self.progress.pass_started(p.name, start + k)
            try:
                results.append((p, p.rewrite(work, self._ctx(p))))
            except Exception:
                logger.debug("batch pass %s raised", p.name, exc_info=True)
                break
        if len(results) == len(batch):
            checked = (
                Checked(stage)
                if not any(r.changed for _, r in results)
                else self._verify_work(work, stage)
            )
            if checked.stage is not None:
                dt = (time.perf_counter() - t0) / len(batch)
                for p, r in results:
                    self._emit(report, self._batch_report(p, r, stage, checked, results, dt))
                return checked.stage
            logger.info(
                "batch %s failed (%s); running its passes one by one",
                [p.name for p in batch],
                checked.why,
            )
        for k, p in enumerate(batch):
            stage = self._run_one(p, start + k, stage, report)
        return stage

    def _batch_report(
        self,
        p: Pass,
        r: PassResult,
        stage: Stage,
        checked: Checked,
        results: list[tuple[Pass, PassResult]],
        seconds: float,
    ) -> PassReport:
        pr = PassReport(p.name, p.exact, seconds=seconds)
        pr.status = "kept" if r.changed else "unchanged"
        pr.rewrites, pr.notes, pr.details = r.rewrites, list(r.notes), dict(r.details)
        pr.before = summary_dict(stage.summary)
        pr.after = summary_dict(checked.stage.summary) if r.changed else pr.before
        if checked.stage is not stage:
            pr.details["verified_together_with"] = [q.name for q, _ in results]
            pr.vs_previous = _metrics(checked.vs_previous)
            pr.vs_original = _metrics(checked.vs_original)
        return pr

    def _emit(self, report: PipelineReport, pr: PassReport) -> None:
        pr.peak_rss_mb = round(self._meter.current() / memory.MiB, 1)
        report.passes.append(pr)
        if self.progress:
            self.progress.pass_done(pr)

    def _run_one(self, p: Pass, index: int, stage: Stage, report: PipelineReport) -> Stage:
        pr = PassReport(p.name, p.exact)
        pr.before = pr.after = summary_dict(stage.summary)
        if self.progress:
            self.progress.pass_started(p.name, index)
        t0 = time.perf_counter()
        self._memo = {}  # shared by this pass's run and its bisection trials, then dropped
        self._prechecked = None
        try:
            if p.needs_data and self._calib.synthesized:
                pr.notes.append("no --data given: working on synthesized inputs")
            result, candidate = p.apply(stage.model, self._ctx(p, stage=stage))
            if not p.exact:
                gc.collect()  # see bisection: a lossy pass's working graphs are big cycles
            pr.rewrites, pr.details = result.rewrites, dict(result.details)
            own = len(pr.notes)  # notes from here on describe the candidate
            pr.notes.extend(result.notes)
            new_stage = stage
            if not result.changed:
                pr.status = "unchanged"
            else:
                new_stage = self._judge_candidate(p, stage, result, candidate, pr, own)
        except MetricError:
            raise  # the user's metric is broken: no candidate can be judged
        except OnnxoptError as e:
            pr.status, pr.reason, new_stage = "error", str(e), stage
        except Exception as e:
            logger.debug("pass %s raised", p.name, exc_info=True)
            pr.status, pr.reason, new_stage = "error", f"{type(e).__name__}: {e}", stage
        finally:
            self._memo, self._prechecked = None, None
        pr.seconds = time.perf_counter() - t0
        self._emit(report, pr)
        if pr.status in ("rolled back", "error") and self.strict:
            raise PipelineError(f"pass '{p.name}' {pr.status}: {pr.reason}")
        return new_stage

    def _judge_candidate(
        self,
        p: Pass,
        stage: Stage,
        result: PassResult,
        candidate: onnx.ModelProto,
        pr: PassReport,
        own: int,
    ) -> Stage:
        """Verify a changed candidate (bisecting its sites if it fails); fill ``pr``."""
        known = self._prechecked.verdict(candidate, stage) if self._prechecked else None
        self._prechecked = None
        checked = self._verify(candidate, stage, p, known=known, prior=self._prior(result))
        failed = checked.stage is None and not checked.why.startswith("not faster")
        # a fallback that keeps fewer than half the candidate's sites gives up most of what
        # the pass was for: bisection keeps every site that verifies instead (MiniLM at
        # cosine 0.998: the search's next prefix within budget, 2 of 47 layers int8, ran
        # 0.96x float's time; bisection kept 34-41)
        big = [2 * len(f) >= len(result.sites) for f in result.fallbacks]
        fallbacks = [f for f, b in zip(result.fallbacks, big, strict=True) if b]
        # a small one the verification runs passed already is the last resort, once the
        # others or the bisection keep nothing (the PP-OCRv5 recognizer at 2 points: its
        # 11-layer candidate failed the check and was bisected, then rolled back, a 55 s job,
        # where its floor, the CTC head alone, had passed there)
        rescue = [
            f
            for i, (f, b) in enumerate(zip(result.fallbacks, big, strict=True))
            if not b and i in result.verified_fallbacks
        ]
        if failed and fallbacks:
            checked = self._fallbacks(p, stage, result, fallbacks, pr, own, checked)
        elif failed and len(result.sites) > 1:
            slow = self._slow_at_best(p, stage, candidate)
            if slow:
                checked = Checked(None, f"{checked.why}; its sites were not bisected: {slow}")
            else:
                feed = self.verifier.exact_feeds.runs[0] if self.measure_candidates else None
                first = [candidate_row(f"all {len(result.sites)} sites", candidate, checked, feed)]
                if feed is not None and not p.exact:
                    first.insert(0, input_row(self.verifier, stage, feed))
                checked = self._bisect(p, stage, result, pr, own, first, feed, checked.why)
        if failed and checked.stage is None and rescue:
            checked = self._fallbacks(p, stage, result, rescue, pr, own, checked)
            if checked.stage is not None:
                pr.notes.append(
                    "that fallback is the one the pass had checked on the verification runs "
                    "already, tried once the rest kept nothing"
                )
        if checked.stage is None:
            pr.status, pr.reason = "rolled back", checked.why
            return stage
        pr.status = "kept"
        pr.after = summary_dict(checked.stage.summary)
        pr.vs_previous = _metrics(checked.vs_previous)
        pr.vs_original = _metrics(checked.vs_original)
        pr.notes.extend(checked.notes)
        if self.verifier.wants_accuracy and not p.exact:
            pr.vs_original.accuracy = self.verifier.accuracy(self.verifier.full(checked.stage))
        pr.vs_original.metric = checked.metric
        return checked.stage

    def _fallbacks(
        self,
        p: Pass,
        stage: Stage,
        result: PassResult,
        fallbacks: list[list[str]],
        pr: PassReport,
        own: int,
        first: Checked,
    ) -> Checked:
        """Verify the pass's own next candidates (``fallbacks``, those of
        ``result.fallbacks`` worth it) in its order, instead of bisecting its sites: a search
        that ordered its sites knows its next choices (the PP-OCRv5 recognizer: one or two
        verifications where bisection took four trials and a race, 15 s). The first within
        budget is timed; none: rolled back."""
        why = first.why
        for k, allowed in enumerate(fallbacks, 1):
            res, cand = p.apply(stage.model, self._ctx(p, set(allowed)))
            if not res.changed:
                continue
            checked = self._verify(cand, stage, p)
            if checked.stage is None:
                why = checked.why
                if checked.why.startswith("not faster"):
                    break  # the next ones rewrite less still
                continue
            dropped = [s for s in result.sites if s not in set(allowed)]
            _keep_subset(pr, own, res, result.sites, dropped)
            pr.notes.append(
                f"its candidate failed the check ({first.why}); its fallback {k} of "
                f"{len(fallbacks)}, {len(allowed)} of {len(result.sites)} sites, passed"
            )
            return checked
        return Checked(None, f"{first.why}; its {len(fallbacks)} fallbacks failed too ({why})")

    def _slow_at_best(self, p: Pass, stage: Stage, candidate: onnx.ModelProto) -> str:
        """Why bisecting a failed speed pass is pointless ("" when it is not): its candidate
        with every site rewritten is not faster than its input, or faster by less than
        ``1 - BISECT_SPEED_RATIO``. A subset rewrites less and gains less (the passes made for
        speed leave out the sites they measured slower), and every bisection trial re-runs the
        pass: on the PP-OCRv5 recognizer, 6 trials of quantize-int8 took 400 s to end on "not
        faster" all the same."""
        if p.exact or p.goal != "speed" or self.allow_slower:
            return ""
        if self.progress:
            self.progress.update(f"timing {p.name}'s candidate before bisecting it", 0, 1)
        try:
            timed = self.verifier.judge_speed(candidate, stage)
        except Exception as e:  # noqa: BLE001 - timing is an optimization here: bisect
            logger.debug("timing before bisection failed: %s", e)
            return ""
        if timed.why:
            return f"with every site rewritten it is {timed.why}"
        ratio = timed.speed_ratio
        if ratio is not None and ratio > BISECT_SPEED_RATIO:
            return (
                f"with every site rewritten it runs in {ratio:.2f}x its input's time "
                f"({timed.notes[-1] if timed.notes else 'raced'}); a subset would gain less "
                f"than the {1 - BISECT_SPEED_RATIO:.0%} that pays for a bisection"
            )
        return ""

    def _bisect(
        self,
        p: Pass,
        stage: Stage,
        result: PassResult,
        pr: PassReport,
        own: int,
        first: list[dict[str, Any]],
        feed: dict[str, Any] | None,
        why: str = "",
    ) -> Checked:
        """Re-apply the pass on subsets of its sites; the report describes the model kept
        (and, for a lossy pass, every candidate tried: ``details["candidates"]``)."""
        sites = result.sites
        tried = list(first)

        def trial(allowed: set[str]) -> Trial:
            res, cand = p.apply(stage.model, self._ctx(p, allowed))
            if not res.changed:
                return Trial(None, "no-op", res)
            checked = self._verify(cand, stage, p, speed=False)
            label = f"trial {len(tried)}: {len(allowed)} of {len(sites)} sites"
            tried.append(candidate_row(label, cand, checked, feed, sorted(allowed)))
            return Trial(checked if checked.stage is not None else None, checked.why, res)

        b = bisect_sites(sites, trial, MAX_BISECT_TRIALS, MAX_BISECT_SECONDS, why)
        pr.dropped_sites = b.dropped
        if not p.exact:
            pr.details["candidates"] = mark_chosen(tried)
        if b.kept is None:
            return Checked(None, b.why)
        if p.goal == "speed" and not self.allow_slower:
            final = self._verify(b.kept.verdict.stage.model, stage, p)
            if final.stage is None:
                return final
        _keep_subset(pr, own, b.kept.result, sites, b.dropped)
        more = " …" if len(b.dropped) > 10 else ""
        if b.budget_spent:
            pr.notes.append(
                f"bisection stopped after {b.trials} trials (its budget: "
                f"{MAX_BISECT_TRIALS} trials, {MAX_BISECT_SECONDS:.0f} s); untried "
                "sites were dropped"
            )
        pr.notes.append(
            f"bisection kept {pr.rewrites} of {len(sites)} sites; "
            f"dropped {b.dropped[:10]}{more}: {b.why}"
        )
        return b.kept.verdict

    # ----------------------------------------------------------------------------------------
    def _verify_work(self, work: Working, stage: Stage) -> Checked:
        """Export a batch's working copy and verify it as an exact candidate."""
        try:
            candidate = work.model()
        except Exception as e:
            return Checked(None, f"{type(e).__name__}: {first_line(e)}")
        if self.progress:
            self.progress.update(f"verifying on {len(self.verifier.exact_feeds)} runs", 0, 1)
        return self.verifier.verify(candidate, stage, exact=True)

    def _verify(
        self,
        candidate: onnx.ModelProto,
        stage: Stage,
        p: Pass,
        speed: bool = True,
        known: Checked | None = None,
        prior: list[float] | tuple[float, ...] = (),
    ) -> Checked:
        """Verify one pass's candidate (and time it, for a lossy pass made for speed);
        ``known``: its verdict on the verification runs, already given (its precheck);
        ``prior``: the race's rounds the pass timed (:meth:`_prior`)."""
        v = self.verifier
        if self.progress and known is None:
            n = len(v.exact_feeds) if p.exact else len(v.feeds)
            self.progress.update(f"verifying {p.name} on {n} runs", 0, 1)
        return v.verify(
            candidate,
            stage,
            p.exact,
            speed=speed and p.goal == "speed",
            deployed=p.verify_deployed and not p.exact,
            known=known,
            prior=prior,
        )

    def _prior(self, result: PassResult) -> list[float]:
        """The pass's own timing of its result (:attr:`PassResult.timed_rounds`), when it
        timed on the feed the race times on."""
        if not result.timed_rounds:
            return []
        mine, race = self._calib.timing_feed(), self.verifier.exact_feeds.timing_feed()
        same = mine.keys() == race.keys() and all(np.array_equal(mine[k], race[k]) for k in mine)
        return list(result.timed_rounds) if same else []


@dataclasses.dataclass
class _Prechecked:
    """The last model a pass's precheck passed (:attr:`PassContext.precheck`): its digest,
    the stage it was checked against and the verdict. A pass that returns that very model
    (quantize-int8's floor, error feedback applied before its check) is not run on the
    verification runs again: the same model on the same runs gives the same verdict (the
    PP-OCRv5 recognizer at 2 points: 1.9 s of a 25 s job)."""

    digest: bytes
    stage: Stage
    checked: Checked

    @classmethod
    def of(cls, model: onnx.ModelProto, stage: Stage, checked: Checked) -> _Prechecked | None:
        d = _digest(model)
        return None if d is None else cls(d, stage, checked)

    def verdict(self, candidate: onnx.ModelProto, stage: Stage) -> Checked | None:
        """The verdict when ``candidate`` is the prechecked model, on the same stage."""
        if stage is not self.stage or _digest(candidate) != self.digest:
            return None
        if self.checked.stage is not None:  # the returned model: its provenance recorded
            self.checked.stage.model = candidate
        self.checked.notes.append(
            "verified on the verification runs once, during the pass's search: the pass "
            "returned the model checked there"
        )
        return self.checked


def _digest(model: onnx.ModelProto) -> bytes | None:
    """A digest of the model's bytes, its nodes' metadata left out (the provenance the
    contract records after the pass ran: :func:`onnxopt.provenance.record`); None when it
    cannot be serialized (over 2 GB). Mapped weights count by their reference: their scratch
    file is only ever appended to (:func:`onnxopt.weights.spill`), so a reference names one
    content."""
    import hashlib

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graphs = [copy.graph]
    while graphs:
        g = graphs.pop()
        for n in g.node:
            n.ClearField("metadata_props")
            for a in n.attribute:
                graphs += ([a.g] if a.HasField("g") else []) + list(a.graphs)
    try:
        return hashlib.blake2b(copy.SerializeToString(deterministic=True)).digest()
    except Exception:  # noqa: BLE001 - protobuf's 2 GB limit
        return None


def _keep_subset(
    pr: PassReport, own: int, result: PassResult, sites: list[str], dropped: list[str]
) -> None:
    """``pr`` describes the re-run of its pass on a subset of its ``sites`` (a bisection
    trial, a fallback): that run's notes and details, the sites dropped. What the re-run did
    not redo (a lossy pass's search, the candidates tried) stays the first run's."""
    pr.details = {**pr.details, **result.details, **_only(pr.details, "candidates")}
    pr.notes[own:] = result.notes
    pr.dropped_sites = dropped
    pr.rewrites = len(sites) - len(dropped)


def _only(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {key: d[key]} if key in d else {}


def _metrics(c: Comparison | None) -> Metrics:
    if c is None:
        return Metrics()
    return Metrics(max_abs=c.max_abs, max_rel=c.max_rel, cosine=c.cosine, top1=c.top1)
