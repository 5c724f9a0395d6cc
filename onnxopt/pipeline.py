"""PassManager: run passes, check, verify, roll back, report.

For every pass (DESIGN.md, "Contracts"):
1. the original's reference outputs are computed once (onnxruntime, optimizations off);
2. the pass runs on a fresh copy of the last good stage; the candidate goes through
   ``onnx.checker`` and strict shape inference, then runs in onnxruntime;
3. an exact pass must match the previous stage within :class:`~onnxopt.verify.Exact`; every pass
   is also compared with the original (exact tolerance until a lossy pass was kept, then the
   user's :class:`~onnxopt.verify.Budget`);
4. a failing pass is rolled back (or raises with ``strict``); a failing pass that listed its
   sites is bisected: its sites are re-applied in halves and every site that verifies is kept.

Consecutive exact passes of one family run as one *batch*: they edit the same graph and are
verified once. If the batch fails, its passes are re-run one at a time with their own checks.
This keeps verification cheap on large models without weakening it.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import onnx

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.data import Feeds, get_feeds
from onnxopt.defaults import MAX_BISECT_TRIALS
from onnxopt.errors import ModelError, OnnxoptError, OptionError, PipelineError, first_line
from onnxopt.graph import to_graph, to_model
from onnxopt.model import ModelSummary, load_model
from onnxopt.report import Metrics, PassReport, PipelineReport, ProgressSink, summary_dict
from onnxopt.verify import Budget, Comparison, Exact, Runner, Runs, accuracy, compare

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


@dataclass
class _Stage:
    model: onnx.ModelProto
    _outputs: Runs | Future
    summary: ModelSummary
    lossy: bool = False

    @property
    def outputs(self) -> Runs:
        """The stage's outputs (the original's may still be computing in the background)."""
        if isinstance(self._outputs, Future):
            self._outputs = self._outputs.result()
        return self._outputs


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
        batch_exact: run consecutive exact passes as one batch, verified once.
        holdout: with lossy passes and no separate calibration feeds, learn from half of the
            runs and verify on the other half.
    """

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
        batch_exact: bool = True,
        holdout: bool = True,
    ) -> None:
        if target not in ("onnx", "onnxruntime"):
            raise OptionError(f"--target must be 'onnx' or 'onnxruntime', not {target!r}")
        bad = [p for p in passes if not isinstance(p, Pass)]
        if bad:
            raise TypeError(f"PassManager takes Pass instances, not {bad[0]!r}: resolve names "
                            "with onnxopt.passes.registry.manager")
        self.passes: list[Pass] = list(passes)
        if not self.passes:
            raise OptionError("no passes to run")
        validate_order(self.passes, order)
        self.budget = budget
        self.target = target
        self.strict = strict
        self.progress = progress
        self.verify_runs = verify_runs
        self.batch_exact = batch_exact
        self.holdout = holdout
        self.runner = Runner()
        self.exact = Exact()

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
        t0 = time.perf_counter()
        # passes work on copies (a gs import, or CopyFrom for whole-model passes), so the
        # caller's ModelProto is read, never modified, and need not be copied here
        original = load_model(model, copy=False)
        if feeds is None:
            feeds = get_feeds(original)
        report = PipelineReport(
            feeds=feeds.source + (" (synthesized)" if feeds.synthesized and "synth" not in
                                  feeds.source else ""),
            budget=(self.budget or Budget()).describe(),
            target=self.target,
        )
        report.notes.extend(feeds.notes)
        verify_on = feeds
        self._calib = calibration if calibration is not None else feeds
        if calibration is not None:
            report.notes.append(f"passes learn from {calibration.source}; verified on {feeds.source}")
        elif self.holdout and any(not p.exact for p in self.passes) and len(feeds) >= 4:
            # a lossy pass that learns from the data it is judged on can overfit (a ridge refit on
            # 8 runs looks perfect on those 8): learn on the first half, verify on the rest
            self._calib, verify_on = feeds.split(0.5)
            report.notes.append(
                f"lossy passes learn from {len(self._calib)} runs and are verified on the other "
                f"{len(verify_on)} (give --calib-data to use separate data)")
        vfeeds = verify_on.subset(self.verify_runs) if self.verify_runs else verify_on
        # the reference runs in onnxruntime (which releases the GIL) while the first passes
        # rewrite the graph in Python; the first verification waits for it
        pool = ThreadPoolExecutor(max_workers=1)
        ref_future = pool.submit(self.runner.run, original, vfeeds)
        pool.shutdown(wait=False)
        summary = ModelSummary.of(original)
        report.original = summary_dict(summary)
        self._original = original
        self._feeds = feeds
        self._vfeeds = vfeeds
        stage = _Stage(original, ref_future, summary)
        self._first = stage
        if self.progress:
            self.progress.start(len(self.passes))
        try:
            i = 0
            while i < len(self.passes):
                batch = self._next_batch(i)
                stage = self._run_batch(batch, i, stage, report)
                i += len(batch)
        finally:
            if self.progress:
                self.progress.stop()
        ref = self._ref
        if vfeeds.labels is not None:
            report.accuracy_original = accuracy(ref, vfeeds.labels or [])
        report.final = summary_dict(stage.summary)
        final_cmp = compare(ref, stage.outputs)
        report.final_vs_original = _metrics(final_cmp)
        if vfeeds.labels is not None:
            report.accuracy_final = accuracy(stage.outputs, vfeeds.labels or [])
        report.seconds = time.perf_counter() - t0
        self.runner.clear()  # sessions hold a copy of the weights; the caller saves next
        return stage.model, report

    @property
    def _ref(self) -> Runs:
        """The original's reference outputs (waits for the background run)."""
        return self._first.outputs

    def _next_batch(self, i: int) -> list[Pass]:
        """Consecutive exact passes run as one batch, verified once (a pass that may convert
        the opset goes alone, through :meth:`Pass.apply`)."""
        first = self.passes[i]
        if not self.batch_exact or not first.exact or first.opset_wanted:
            return [first]
        batch = [first]
        for p in self.passes[i + 1 :]:
            if not p.exact or p.opset_wanted:
                break
            batch.append(p)
        return batch

    # ----------------------------------------------------------------------------------------
    def _ctx(self, p: Pass, site_filter: set[str] | None = None) -> PassContext:
        def prog(what: str, done: int, total: int) -> None:
            if self.progress:
                self.progress.update(what, done, total)

        return PassContext(
            feeds=self._calib,
            options=dict(getattr(p, "legacy_options", {})),
            target=self.target,
            original=self._original,
            site_filter=site_filter,
            progress=prog,
            budget=self.budget,
            runner=self.runner,
        )

    def _apply(self, p: Pass, model: onnx.ModelProto, site_filter: set[str] | None = None
               ) -> tuple[PassResult, onnx.ModelProto]:
        return p.apply(model, self._ctx(p, site_filter))

    def _run_batch(self, batch: list[Pass], start: int, stage: _Stage,
                   report: PipelineReport) -> _Stage:
        if len(batch) == 1:
            return self._run_one(batch[0], start, stage, report)
        # several exact passes on one graph (or proto, for whole-model passes), verified once
        t0 = time.perf_counter()
        graph: Any = None
        proto: onnx.ModelProto | None = stage.model
        results: list[tuple[Pass, PassResult | Exception]] = []
        for k, p in enumerate(batch):
            if self.progress:
                self.progress.pass_started(p.name, start + k)
            try:
                if p.needs_model:
                    if proto is None:
                        proto = to_model(graph, like=stage.model)
                    if proto is stage.model:  # the kept stage must not change; a fresh export may
                        m = onnx.ModelProto()
                        m.CopyFrom(proto)
                    else:
                        m = proto
                    r = p.run_model(m, self._ctx(p))
                    if r.changed:
                        proto, graph = (r.model if r.model is not None else m), None
                else:
                    if graph is None:
                        graph = to_graph(proto)
                    r = p.run(graph, self._ctx(p))
                    if r.changed:
                        proto = None
                results.append((p, r))
            except Exception as e:  # noqa: BLE001 - fall back to one-by-one for a clear report
                logger.debug("batch pass %s raised", p.name, exc_info=True)
                results.append((p, e))
                break
        ok_batch = all(not isinstance(r, Exception) for _, r in results)
        changed = any(isinstance(r, PassResult) and r.changed for _, r in results)
        if ok_batch and not changed:
            dt = (time.perf_counter() - t0) / len(batch)
            for p, r in results:
                pr = PassReport(p.name, p.exact, status="unchanged", seconds=dt)
                pr.notes = list(r.notes)  # type: ignore[union-attr]
                pr.before = pr.after = summary_dict(stage.summary)
                pr.details = dict(r.details)  # type: ignore[union-attr]
                self._emit(report, pr)
            return stage
        if ok_batch:
            try:
                candidate = proto if proto is not None else to_model(graph, like=stage.model)
                new_stage, why, cmp_prev, cmp_orig = self._verify(candidate, stage, exact=True)
            except Exception as e:  # noqa: BLE001
                new_stage, why = None, f"{type(e).__name__}: {e}"
            if new_stage is not None:
                dt = (time.perf_counter() - t0) / len(batch)
                for p, r in results:
                    pr = PassReport(p.name, p.exact, seconds=dt)
                    assert isinstance(r, PassResult)
                    pr.status = "kept" if r.changed else "unchanged"
                    pr.rewrites, pr.notes, pr.details = r.rewrites, list(r.notes), dict(r.details)
                    pr.details["verified_together_with"] = [q.name for q, _ in results]
                    pr.before = summary_dict(stage.summary)
                    pr.after = summary_dict(new_stage.summary) if r.changed else pr.before
                    pr.vs_previous, pr.vs_original = _metrics(cmp_prev), _metrics(cmp_orig)
                    self._emit(report, pr)
                return new_stage
            logger.info("batch %s failed (%s); running its passes one by one",
                        [p.name for p in batch], why)
        for k, p in enumerate(batch):
            stage = self._run_one(p, start + k, stage, report)
        return stage

    def _emit(self, report: PipelineReport, pr: PassReport) -> None:
        report.passes.append(pr)
        if self.progress:
            self.progress.pass_done(pr)

    def _run_one(self, p: Pass, index: int, stage: _Stage, report: PipelineReport) -> _Stage:
        pr = PassReport(p.name, p.exact)
        pr.before = summary_dict(stage.summary)
        pr.after = pr.before
        if self.progress:
            self.progress.pass_started(p.name, index)
        t0 = time.perf_counter()
        try:
            if p.needs_data and self._calib.synthesized:
                pr.notes.append("no --data given: working on synthesized inputs")
            result, candidate = self._apply(p, stage.model)
            if not p.exact:
                gc.collect()  # see _bisect: a lossy pass's working graphs are big cycles
            pr.rewrites, pr.details = result.rewrites, dict(result.details)
            own = len(pr.notes)  # notes from here on describe the candidate
            pr.notes.extend(result.notes)
            if not result.changed:
                pr.status = "unchanged"
                new_stage = stage
            else:
                new_stage, why, cmp_prev, cmp_orig = self._verify(candidate, stage, p.exact)
                if new_stage is None and len(result.sites) > 1:
                    new_stage, why, cmp_prev, cmp_orig, dropped, kept = self._bisect(
                        p, stage, result.sites
                    )
                    pr.dropped_sites = dropped
                    if new_stage is not None:
                        # the report describes the model kept, not the full candidate
                        pr.details = dict(kept.details)
                        pr.notes[own:] = kept.notes
                        pr.rewrites = len(result.sites) - len(dropped)
                        pr.notes.append(
                            f"bisection kept {pr.rewrites} of {len(result.sites)} sites; "
                            f"dropped {dropped[:10]}{' …' if len(dropped) > 10 else ''}: {why}"
                        )
                if new_stage is None:
                    pr.status = "rolled back"
                    pr.reason = why
                    new_stage = stage
                else:
                    pr.status = "kept"
                    pr.after = summary_dict(new_stage.summary)
                    pr.vs_previous, pr.vs_original = _metrics(cmp_prev), _metrics(cmp_orig)
                    if new_stage.summary is not stage.summary and self._vfeeds.labels is not None:
                        pr.vs_original.accuracy = accuracy(new_stage.outputs,
                                                           self._vfeeds.labels or [])
        except OnnxoptError as e:
            pr.status, pr.reason, new_stage = "error", str(e), stage
        except Exception as e:  # noqa: BLE001 - a broken pass never takes the pipeline down
            logger.debug("pass %s raised", p.name, exc_info=True)
            pr.status, pr.reason, new_stage = "error", f"{type(e).__name__}: {e}", stage
        pr.seconds = time.perf_counter() - t0
        self._emit(report, pr)
        if pr.status in ("rolled back", "error") and self.strict:
            raise PipelineError(f"pass '{p.name}' {pr.status}: {pr.reason}")
        return new_stage

    # ----------------------------------------------------------------------------------------
    def _verify(self, candidate: onnx.ModelProto, stage: _Stage, exact: bool
                ) -> tuple[_Stage | None, str, Comparison | None, Comparison | None]:
        """Check, run and compare ``candidate``; returns (new stage or None, reason, cmps)."""
        try:
            inferred = structural_check(candidate)
            # building the session (mostly one thread) may overlap the reference's runs, but
            # two sessions never run at once: both would get half the cores
            session = self.runner.session(candidate)
            _ = self._ref
            outputs = self.runner.run_session(session, self._vfeeds)
        except OnnxoptError as e:
            return None, str(e), None, None
        except Exception as e:  # noqa: BLE001
            return None, f"{type(e).__name__}: {e}", None, None
        why, cmp_prev, cmp_orig = self._judge(outputs, stage, exact)
        if why:
            self.runner.forget(session)  # a rejected candidate's session is never run again
            return None, why, cmp_prev, cmp_orig
        summary = ModelSummary.of(candidate, inferred)
        return _Stage(candidate, outputs, summary, stage.lossy or not exact), "", cmp_prev, cmp_orig

    def _judge(self, outputs: Runs, stage: _Stage, exact: bool
               ) -> tuple[str, Comparison, Comparison]:
        """("" or why the candidate's outputs fail, vs previous stage, vs original)."""
        from_original = stage.outputs is self._ref  # then one comparison serves both
        cmp_prev = compare(stage.outputs, outputs)
        cmp_orig = cmp_prev if from_original else compare(self._ref, outputs)
        if exact:
            v = self.exact.check(stage.outputs, outputs)
            if not v:
                return "outputs changed: " + v.reason, cmp_prev, cmp_orig
        if stage.lossy or not exact:
            acc = None
            if self._vfeeds.labels is not None:
                acc = (accuracy(self._ref, self._vfeeds.labels or []),
                       accuracy(outputs, self._vfeeds.labels or []))
            v = (self.budget or Budget()).check(cmp_orig, acc)
            if not v:
                return "over budget: " + v.reason, cmp_prev, cmp_orig
        elif not from_original:
            v = self.exact.check(self._ref, outputs)
            if not v:
                return "drifted from the original: " + v.reason, cmp_prev, cmp_orig
        return "", cmp_prev, cmp_orig

    def _bisect(self, p: Pass, stage: _Stage, sites: list[str]):
        """Keep every site that verifies: try chunks, split failing chunks in halves. Returns
        (stage, why, cmp vs previous, cmp vs original, dropped sites, the kept trial's
        PassResult)."""
        good: list[str] = []
        dropped: list[str] = []
        queue: list[list[str]] = [sites[: len(sites) // 2], sites[len(sites) // 2 :]]
        best: tuple[_Stage | None, str, Any, Any] = (None, "", None, None)
        kept: PassResult | None = None
        last_why = ""
        trials = 0
        while queue:
            chunk = queue.pop(0)
            if not chunk:
                continue
            if trials >= MAX_BISECT_TRIALS:
                dropped.extend(chunk)
                continue
            trials += 1
            try:
                result, cand = self._apply(p, stage.model, set(good + chunk))
                res = self._verify(cand, stage, p.exact) if result.changed else (None, "no-op",
                                                                                 None, None)
            except Exception as e:  # noqa: BLE001
                res = (None, f"{type(e).__name__}: {e}", None, None)
            # a trial leaves a whole model behind in gs reference cycles (nodes <-> tensors):
            # collect them now, not when the cyclic GC happens to run (BERT-base: ~1 GB a trial)
            gc.collect()
            if res[0] is not None:
                good += chunk
                best, kept = res, result
            elif len(chunk) == 1:
                dropped.append(chunk[0])
                last_why = res[1]
            else:
                h = len(chunk) // 2
                queue[:0] = [chunk[:h], chunk[h:]]
        if not good:
            return None, last_why or "every site failed", None, None, dropped, None
        return best[0], last_why, best[2], best[3], dropped, kept


def structural_check(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker and strict shape inference, as a ModelError.

    Both run on the light copy (large weights replaced by typed inputs of their shape): the
    checker still sees every node, attribute, opset and small constant, and shape inference is
    equivalent; on a 400 MB model this avoids serializing the weights twice per pass.

    Returns:
        the shape-inferred light copy (the stage's summary reuses it).
    """
    from onnxopt.model import light_model

    try:
        light = light_model(model)
        onnx.checker.check_model(light)
        return onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True,
                                                 data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = first_line(e)
        raise ModelError(f"invalid model after rewrite: {first}") from e


def _metrics(c: Comparison | None) -> Metrics:
    if c is None:
        return Metrics()
    return Metrics(max_abs=c.max_abs, max_rel=c.max_rel, cosine=c.cosine, top1=c.top1)
