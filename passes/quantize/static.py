"""quantize-int8: static int8 quantization with onnxopt's own calibration and QDQ insertion.

(Slightly over the house's ~450 lines: one short method per step below, the work of each in
its own module.)

Pipeline (each step its own module):

1. prepare the float model (:mod:`.prepare`): shapes, aliased initializers, node names; then,
   exact in float, cross-layer equalization (:mod:`.equalize`, ``equalize``) and smoothing of
   MatMul inputs (:mod:`.smooth`; one strength per layer on transformers, :mod:`.transformer`);
2. plan Q/DQ placement (:mod:`.placement`);
3. per-layer time of the int8 and the float model on this CPU (:mod:`.latency`, on int8
   models built with min/max ranges of two runs: the kernels' speed does not depend on the
   scales): what int8 makes slower stays float (``latency_aware``) when the model with it
   float races faster than all-int8 beyond noise, by :data:`.latency.FLOAT_MARGIN` for layers
   with weights and elementwise sites (:func:`.latency.pays_as_a_whole`); then the
   whole model, timed in turns with the float one (:class:`.mixed.SpeedProbe`), must be
   :data:`.mixed.SPEED_MARGIN` faster, or the pass stops there, before calibrating (with a
   task metric as the budget, the profile's placement is kept unraced and the whole model
   is timed by the search once its floor holds: :data:`FLOOR_FIRST`);
4. stream the statistics of the tensors the kept sites read and write over the calibration
   feeds into ranges (:mod:`.calibrate`); a group of tensors shares the union;
5. weights: rounded to nearest, or learned rounding (:mod:`.adaround`, ``rounding``);
   one instrumented run (:mod:`.sensitivity`): each layer's output shift and SQNR with only
   it quantized; the shift corrects its bias (:mod:`.bias_correction`, ``bias_correction``;
   ``data-free`` reads BatchNorm statistics instead);
6. with a budget: mixed precision (:mod:`.mixed`), the layers that cost most accuracy per
   microsecond they save leave int8 (to dynamic int8 or float) until the budget holds; the
   accuracy/latency curve goes to ``details["tradeoff"]``.

Sites inside If/Loop/Scan bodies are planned, calibrated (over every loop iteration) and
quantized in static int8 like the main graph's (:mod:`.bodies`); the per-layer steps 3-6 run
on the main graph's sites, and body sites stay int8.

Memory is bounded whatever the number of samples: statistics and Gram matrices stream (see
each module); planning reads weight shapes only, and the probe model is a copy whose large
weights are shared with onnxruntime (mapped, or handed over without a copy:
:mod:`onnxopt.sessions`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxopt import weights
from onnxopt.contract import Pass, PassContext, PassError, PassResult
from onnxopt.data import Feeds
from onnxopt.graph import const_value, opset_version, to_graph
from onnxopt.scopes import site_key

from . import latency as lat
from . import mixed
from .adaround import MAX_ROWS, RowSampler, learn_rounding
from .bias_correction import data_free_shifts
from .bodies import scope_graphs
from .build import Builder, dynamic_batch, group_params
from .calibrate import MinMax, TensorStats, make_calibrator
from .collect import collect_minmax, collect_stats, collect_stats_split, probe_model
from .config import QuantizeConfig
from .fallback import Judge
from .mixed import step_label
from .placement import CANDIDATES, Plan, make_plan
from .prepare import Collected, equalize_layers, prepare, smooth
from .qdq import resolve_reduce_range
from .sensitivity import Instrument, SiteStats
from .sensitivity import measure as measure_sensitivity
from .transformer import has_attention

logger = logging.getLogger(__name__)

MIN_SAMPLES = 16
#: rounds of "measure, leave the slower sites in float, measure again"
LATENCY_ROUNDS = 3
#: seconds each model runs in the first profile round, and in the later ones: a later round
#: re-times a model that differs from the last one only where layers went float, to catch a
#: neighbour made slower by the new boundary (MobileNetV2, batch 32: 1.0 s a round at 0.4 s)
FIRST_ROUND_SECONDS, LATER_ROUND_SECONDS = 0.2, 0.1
#: with ``ctx.parallel`` (``onnxopt search`` on Ray), calibration over at least this many runs
#: is split across workers (the same statistics)
PARALLEL_MIN_RUNS = 32
#: runs whose min/max give the ranges the latency profile builds its int8 models with: the
#: smallest ones (:meth:`QuantizeInt8._rough_ranges`)
ROUGH_RUNS = 2
#: a latency profile that puts the int8 model this fraction or more under float's time is
#: believed; below it, the whole model is timed before calibrating (:meth:`_whole_gain`). The
#: profile sums kernel times, and the regimes of an AMD EPYC do not move int8 and float
#: kernels alike: PP-OCRv5's recognizer profiled its int8 placement 35 % under float where
#: the whole model ran 1.19x float's time (its job then calibrated, measured sensitivity and
#: scored a candidate, 27 s, before the search's own timing ended it float), and 10 % over
#: float where it ran 0.68x. A search that misses the budget with every layer int8 times that
#: model anyway, and takes this timing instead (MiniLM: 35 %); MobileNetV2 (55 %), whose
#: all-int8 model meets its budget at once, is timed only by the manager's race after it
SURE_GAIN = 0.4
#: when the latency profile's placement, timed whole, is not faster than float, the layers
#: whose int8 saves this fraction of the float model's profiled time or more each are timed
#: alone (:func:`_cores`): in the slow regime of an AMD EPYC the short kernels around int8
#: layers (QuantizeLinear, DequantizeLinear, the elementwise ops between) run 4-6x slower and
#: the placement lost, while the PP-OCRv5 recognizer's CTC head, a MatMul of 120 inputs to
#: 18,385 classes and 12 % of its time, ran 3x faster in int8 on its own
CORE_SHARE = 0.02
#: a linear layer with this many times as many outputs as inputs is "wide" (:func:`_wide_linear`)
WIDE_RATIO = 16
#: a latency profile that times the int8 placement this far or more above float's time ends
#: the pass without timing the model whole; nearer, the whole model is timed in turns with
#: the float one first (:meth:`_whole_gain`). A profile sums kernel times, each with its own
#: overhead, and is not the model's time: the earlier profile (two sessions in turns) read the
#: PP-OCRv5 recognizer's float model at 15.2 ms in one run (11.3 ms timed whole) and left int8
#: out at 16.9 ms profiled for a placement that runs in 0.64x float's time
NO_GAIN_ABOVE = 1.2
#: with a task-metric budget (``--metric``), the search scores the placement's floor first:
#: the prefix with the fewest int8 layers the latency profile still credits with
#: :data:`.mixed.SPEED_MARGIN` of float's time, else the one with one int8 layer left
#: (``mixed.search``'s ``floor_first``). Missing the budget there, or refused on the
#: verification runs, nothing the search could keep passes, and the pass ends float before
#: timing any candidate. The race that refines the profile's placement
#: (:func:`.latency.pays_as_a_whole`, with the layers measured slower float or int8) is then
#: left out: it can only put layers back into int8. The whole-model timing before calibrating
#: (:meth:`QuantizeInt8._whole_gain`) is left to the search too when the profile finds a gain
#: (the search times the same model, all int8, once the floor holds). On the PP-OCRv5
#: detector, whose one-layer floor changes the text of 13-16 % of the pages, the race, the
#: timings and the all-int8 candidate's task-metric run cost 4-6 s of a 14-16 s job that
#: ends float either way
FLOOR_FIRST = True


class QuantizeInt8(Pass):
    """Static int8 QDQ quantization placed for onnxruntime's int8 CPU kernels.

    Configured by a :class:`.config.QuantizeConfig` (calibrator, rounding, bias correction,
    equalization, smoothing, latency awareness, mixed precision, ...).
    """

    name = "quantize-int8"
    exact = False
    goal = "speed"
    summary = "static int8 QDQ quantization with calibration and accuracy-aware fallback"
    tags = ("quantize",)
    needs_model = True
    needs_data = True
    opset_wanted = 13  # per-channel weight scales
    opset_needed = 10  # QuantizeLinear
    config_class = QuantizeConfig
    config: QuantizeConfig

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        c = self.config
        first = (ctx.memo or {}).get(self.name)
        if ctx.site_filter is not None and first is not None:
            return _trial(first, ctx)
        notes = self._check_feeds(ctx.feeds)
        opset = opset_version(model)
        base = prepare(model)
        attention = has_attention(base) if c.transformer == "auto" else bool(c.transformer)
        #: ``rounding`` resolved: ``auto`` is error feedback on a graph with attention
        self._rounding = (
            c.rounding if c.rounding != "auto" else ("gptq" if attention else "nearest")
        )
        equalized = 0
        if c.equalize:
            equalized, why = equalize_layers(base, c, ctx)
            notes += why
        # the search's reference, the input model's outputs on the runs it scores, is read by
        # whichever run of the unequalized model (prepared: the same arithmetic) reads those
        # runs first: the smoothing statistics (all-MiniLM-L6-v2: 0.7 s; BERT-base: 4.6 s),
        # else the calibration, for the runs it reads one at a time (a fixed-batch ResNet-50:
        # 2 of its 13 model runs); _mixed runs the others
        reference: list[dict[str, np.ndarray]] | None = (
            [] if not equalized and c.smooth_runs == c.fallback_runs else None
        )
        plan_kw = self._plan_options(opset, notes)
        graph = to_graph(base)
        exclude = set(c.exclude)
        allowed = [
            n.name
            for n in graph.nodes
            if n.op in (*CANDIDATES, "Gather")
            and n.name not in exclude
            and n.op not in exclude
            and ctx.allow(n.name)
        ]
        full = make_plan(graph, set(allowed), **plan_kw)
        sites = [s for s in allowed if s in full.sites or s in full.embeddings]
        body_sites, body_tensors, body_notes = self._body_plan(graph, plan_kw, ctx)
        plan_notes = full.notes + body_notes  # why each candidate stays float
        if not sites and not body_sites:
            return PassResult(False, 0, notes + plan_notes[:20])
        tensors = sorted(set(full.tensors()) | body_tensors)
        timed_first = c.latency_aware and not ctx.allow_slower
        # a task-metric budget: its search scores first the model with the fewest int8 layers
        # the latency profile credits with a gain (mixed.search's ``floor_first``), and the
        # race that would refine the placement's speed before calibrating is left out (see
        # FLOOR_FIRST)
        floor_first = (
            FLOOR_FIRST
            and timed_first
            and c.fallback
            and ctx.site_filter is None
            and ctx.budget is not None
            and ctx.budget.metric is not None
        )

        def builder(float_model: onnx.ModelProto, ranges: dict) -> Builder:
            b = Builder(
                float_model,
                model,
                ranges,
                plan_kw,
                activations=c.activations,
                reduce_range=resolve_reduce_range(c.reduce_range),
                per_axis_ok=opset >= 13,
            )
            b.always_dynamic = wide
            return b

        wide = _wide_linear(full)
        # the latency profile times the kernels, which the scales do not change: a min/max
        # read on a few runs serves it, and only the sites it keeps in int8 are calibrated
        # (PP-OCRv5: a detector int8 cannot speed skips its 8 s of calibration; the
        # recognizer calibrates the tensors of 24 of its 62 sites)
        build = builder(base, self._rough_ranges(base, tensors, ctx) if timed_first else {})
        details = self._details(plan_kw, {}, attention)
        gains: dict[str, float] = {}
        total_us = 0.0
        speed = None  # (probe, the all-int8 model's (ms, ratio to float)): the search's
        if timed_first:
            sites, gains, total_us = self._latency(
                build, model, sites, ctx, notes, details, race=not floor_first
            )
            if not sites and not body_sites:
                return PassResult(False, 0, notes + plan_notes[:20], details=details)
            # a model too large for the whole-model timing is judged on its profile alone
            timeable = _memo_fits(model)
            why = _no_gain(details.get("latency"), NO_GAIN_ABOVE if timeable else 1.0)
            gain = _profile_gain(details.get("latency"))
            # a task-metric budget's search checks its floor before timing anything: a
            # placement the profile puts under float's time is timed there, when the floor
            # holds (its all-int8 prefix is the whole placement); one it puts at or above is
            # timed whole here, as refusing it costs no calibration (the PP-OCRv5 classifier)
            if not why and gain < SURE_GAIN and timeable and not (floor_first and gain > 0):
                why, speed = self._whole_gain(build, model, sites, body_sites, ctx, details)
            if why and timeable:
                # the placement as a whole does not pay, its largest layers alone may: the
                # rest's Q/DQ glue is what the slow regime of an AMD EPYC slows most (see
                # CORE_SHARE); raced the same way, with the same float session
                for core in _cores(sites, gains, total_us, build.always_dynamic):
                    why_core, speed_core = self._whole_gain(
                        build, model, core, body_sites, ctx, details, speed[0] if speed else None
                    )
                    if why_core:
                        continue
                    ratio = speed_core[1][1] if speed_core else math.nan
                    notes.append(
                        f"int8 pays on {len(core)} layer{'s' if len(core) > 1 else ''} alone, "
                        f"among those that save {CORE_SHARE:.0%} or more of the float model's "
                        f"time each ({', '.join(core[:5])}): {ratio:.2f}x its time, timed in "
                        f"turns; only they are quantized ({why})"
                    )
                    sites, why, speed = core, "", speed_core
                    break
            if why and not body_sites:  # no calibration or search for what int8 cannot speed
                return PassResult(False, 0, [why, *notes, *plan_notes[:20]], details=details)
        # smoothing after the placement, on the MatMuls it keeps in int8: smoothing a float
        # one buys nothing, and on the PP-OCRv5 recognizer, whose placement keeps its CTC head
        # alone, the statistics of its three attention MatMuls cost a pass over the data (3 s)
        if timed_first:
            full = make_plan(graph, set(sites), **plan_kw)
            tensors = sorted(set(full.tensors()) | body_tensors)
        collect = self._collect_with_smoothing(tensors, body_tensors, ctx, attention)
        if collect is not None:
            collect.rows = self._row_sampler(base, sites, ctx)
        smoothed_base, smooth_info, smoothed = smooth(
            base, c, ctx, attention, notes, reference, only=set(sites), collect=collect
        )
        details.update(self._details(plan_kw, smooth_info, attention))
        changed = smoothed_base is not base
        if changed:
            base = smoothed_base
            build = builder(base, {})  # the smoothed weights: the first one's rounding is stale
            graph = to_graph(base)
            full = make_plan(graph, set(sites), **plan_kw)
            tensors = sorted(set(full.tensors()) | body_tensors)
            if speed is not None and smooth_info.get("folded", 0) < smooth_info.get("groups", 0):
                # a Mul now scales a MatMul input: the placement timed whole is not this model
                speed = (speed[0], None)
        del graph
        linear = _linear_inputs(full) - smoothed
        if collect is not None and collect.read and set(tensors) <= set(collect.stats):
            # read with the smoothing statistics (the smoothed inputs' from their channels)
            build.ranges = self._ranges({t: collect.stats[t] for t in tensors}, smoothed, linear)
        elif not reference and not equalized and not smoothed:
            build.ranges, reference = self._calibrate_keeping(base, tensors, ctx, linear)
        else:
            build.ranges = self._calibrate(base, tensors, ctx, smoothed, linear=linear)
        build.rows = collect.rows if collect is not None else None
        self._weights(build, full, ctx, notes, details)
        stats = self._instrument(build, full, ctx, notes, details)
        axes = self._weighted(build, full)
        del full
        if ctx.memo is not None and ctx.site_filter is None and _memo_fits(model):
            # a bisection trial reuses this run's smoothing, calibration, bias correction and
            # latency placement (each trial redid them: 4.4 s of its 8 on the PP-OCRv5
            # recognizer); the site filter only narrows the sites placed here
            ctx.memo[self.name] = _First(
                build, list(sites), list(body_sites), list(notes), plan_notes[:20]
            )
        searched = ctx.site_filter is None and ctx.budget is not None and c.fallback
        if self._rounding == "gptq" and not searched:
            self._feed_back(build, axes, sites, ctx, notes, details)  # no search: every site
        qmodel, kept = build(set(sites) | set(body_sites)), list(sites)
        fallbacks: list[list[str]] = []
        verified: list[int] = []
        turns: list[float] = []
        if ctx.site_filter is not None:
            # a bisection trial: its sites are ones the first run's search kept in int8, and
            # the trial verifies them as they are (a search per trial cost ~20 s of ~30 on the
            # PP-OCRv5 recognizer)
            notes.append("bisection trial: the sites allowed in int8, without a new search")
        elif ctx.budget is not None and c.fallback:
            qmodel, kept, fallbacks, verified, turns = self._mixed(
                model,
                build,
                sites,
                stats,
                gains,
                total_us,
                ctx,
                notes,
                details,
                body_sites,
                speed,
                reference or None,
                axes=axes,
                floor_first=floor_first,
            )
        kept += body_sites
        details["counts"] = dict(build.inserter.counts) if build.inserter else {}
        notes += (build.inserter.notes if build.inserter else []) + plan_notes[:20]
        if not kept:
            return PassResult(False, 0, notes, details=details)
        return PassResult(
            True,
            len(kept),
            notes,
            sites=kept,
            details=details,
            model=qmodel,
            # a fallback re-run reuses this run through the memo; without it, none is offered
            fallbacks=fallbacks if self.name in (ctx.memo or {}) else [],
            verified_fallbacks=verified if self.name in (ctx.memo or {}) else [],
            timed_rounds=turns,
        )

    # --------------------------------------------------------------------------------------

    def _check_feeds(self, feeds: Feeds | None) -> list[str]:
        """Notes on the calibration feeds; none at all is an error."""
        if feeds is None or len(feeds) == 0:
            raise PassError(f"{self.name}: needs calibration data (--data)")
        notes = []
        if feeds.synthesized:
            notes.append("calibrated on synthesized inputs: ranges may not match real data")
        if feeds.num_samples < MIN_SAMPLES:
            notes.append(
                f"only {feeds.num_samples} calibration samples (< {MIN_SAMPLES}): "
                "ranges may be unreliable"
            )
            logger.warning("only %d calibration samples", feeds.num_samples)
        return notes

    def _plan_options(self, opset: int, notes: list[str]) -> dict[str, Any]:
        c = self.config
        if c.per_channel and opset < 13:
            notes.append(f"opset {opset} < 13: per-tensor weight scales")
        return dict(
            per_channel=c.per_channel and opset >= 13,
            fold_relu=c.activations == "uint8",
            quantize_residual=c.quantize_residual,
            embeddings=c.embeddings,
            elementwise=c.elementwise,
        )

    def _details(
        self, plan_kw: dict[str, Any], smooth_info: dict[str, Any], attention: bool
    ) -> dict[str, Any]:
        c = self.config
        return {
            "calibrator": str(make_calibrator(c.calibrator, c.percentile)),
            # the MatMul inputs smoothing scaled, when there are any
            "smoothed_calibrator": (
                str(make_calibrator(c.smoothed_calibrator, c.percentile))
                if c.smoothed_calibrator is not None and smooth_info.get("groups")
                else None
            ),
            "linear_calibrator": str(make_calibrator(c.linear_calibrator, c.percentile))
            if c.linear_calibrator is not None
            else None,
            "activations": c.activations,
            "per_channel": plan_kw["per_channel"],
            "reduce_range": resolve_reduce_range(c.reduce_range),
            "attention": attention,
            "rounding": self._rounding,
            "bias_correction": c.bias_correction,
            "equalize": c.equalize,
            "counts": {},
            "float_nodes": [],
            "smoothing": smooth_info,
        }

    def _rough_ranges(
        self, base: onnx.ModelProto, tensors: list[str], ctx: PassContext
    ) -> dict[str, tuple[float, float]]:
        """Each tensor's min and max over the :data:`ROUGH_RUNS` smallest runs: ranges that
        build int8 models for the latency profile, not for accuracy (a kernel's time does not
        depend on its scales). Every tensor is a graph output there, each kept whole: two runs
        spread over the PP-OCRv5 recognizer's data returned 0.8 GB and took 1.7 s."""
        runs = ctx.feeds.runs
        size = [sum(np.asarray(v).nbytes for v in r.values()) for r in runs]
        small = sorted(range(len(runs)), key=lambda i: (size[i], i))[:ROUGH_RUNS]
        probe, exposed = probe_model(base, tensors)
        seen = collect_minmax(
            probe, list(dict.fromkeys(exposed.values())), [runs[i] for i in sorted(small)]
        )
        del probe
        return {t: seen[out] for t, out in exposed.items() if out in seen}

    def _collect_with_smoothing(
        self, tensors: list[str], body_tensors: set[str], ctx: PassContext, attention: bool
    ) -> Collected | None:
        """Statistics for the calibration to stream in the smoothing's runs (see
        :class:`.prepare.Collected`), when that pass reads the runs the calibration would:
        every learning run (at most ``smooth_runs``), in this process, main-graph tensors
        only, and the smoothed inputs calibrated by min/max (their ranges are derived, not
        binned). None: the calibration reads the runs itself."""
        c = self.config
        runs = len(ctx.feeds.runs)
        if (
            c.smooth is None
            or (c.smooth == "auto" and not attention)  # no smoothing pass to share
            or body_tensors
            or runs > c.smooth_runs
            or (ctx.parallel is not None and runs >= PARALLEL_MIN_RUNS)
            or not isinstance(
                make_calibrator(c.smoothed_calibrator or c.calibrator, c.percentile), MinMax
            )
        ):
            return None
        return Collected({t: TensorStats(t, c.bins) for t in tensors})

    def _row_sampler(
        self, base: onnx.ModelProto, sites: list[str], ctx: PassContext
    ) -> RowSampler | None:
        """Error feedback's input rows of the MatMul and Gemm ``sites``, to draw in the
        calibration's pass (:class:`.adaround.RowSampler`), when the search may feed errors
        back (``rounding="gptq"`` with a budget) and the rows fit :data:`ROWS_MAX_BYTES`
        (read from the weights' shapes: a large model's weights are not loaded here)."""
        if self._rounding != "gptq" or ctx.budget is None or not self.config.fallback:
            return None
        dims = {t.name: list(t.dims) for t in base.graph.initializer}
        wanted, inputs = set(sites), {}
        for n in base.graph.node:
            if n.name not in wanted or n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2:
                continue
            w = dims.get(n.input[1])
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if w is None or len(w) != 2 or attrs.get("transA", 0):
                continue
            k = w[1] if n.op_type == "Gemm" and attrs.get("transB", 0) else w[0]
            inputs[n.input[0]] = (n.op_type, int(k))
        if not inputs:
            return None
        if sum(RowSampler.nbytes(k, MAX_ROWS) for _, k in inputs.values()) > ROWS_MAX_BYTES:
            return None
        return RowSampler(
            {t: op for t, (op, _) in inputs.items()},
            len(ctx.feeds.runs),
            max_rows=MAX_ROWS,
            seed=self.config.seed,
        )

    def _calibrate_keeping(
        self, base: onnx.ModelProto, tensors: list[str], ctx: PassContext, linear: set[str]
    ) -> tuple[dict[str, tuple[float, float]], list[dict[str, np.ndarray]] | None]:
        """(:meth:`_calibrate`'s ranges, ``base``'s outputs on the runs of
        ``ctx.feeds.subset(fallback_runs)``: None for a run it did not run alone). Those runs
        of :data:`ALONE_MIN_BYTES` or more go alone, where concatenating buys little (the
        PP-OCRv5 detector's images: 7 MB, 30 of 31 concatenated, then run again, 1.4 s)."""
        index = {id(r): i for i, r in enumerate(ctx.feeds.runs)}
        want = [index[id(r)] for r in ctx.feeds.subset(self.config.fallback_runs).runs]
        runs = ctx.feeds.runs
        big = {i for i in want if sum(v.nbytes for v in runs[i].values()) >= ALONE_MIN_BYTES}
        seen: dict[int, dict[str, np.ndarray]] = {}
        ranges = self._calibrate(base, tensors, ctx, set(), seen, big, linear=linear)
        return ranges, [seen.get(i) for i in want]

    def _calibrate(
        self,
        base: onnx.ModelProto,
        tensors: list[str],
        ctx: PassContext,
        smoothed: set[str],
        outputs: dict[int, dict[str, np.ndarray]] | None = None,
        alone: set[int] | frozenset = frozenset(),
        *,
        linear: set[str] | frozenset = frozenset(),
    ) -> dict[str, tuple[float, float]]:
        """Each tensor's range; the ``smoothed`` MatMul inputs' by ``smoothed_calibrator``,
        the other ``linear`` layer inputs' by ``linear_calibrator``.
        ``outputs``: see :func:`.collect.collect_stats` (not filled when the runs are split
        between workers)."""
        c = self.config
        probe, exposed = probe_model(base, tensors)
        outputs_read = list(dict.fromkeys(exposed.values()))
        kw = {"bins": c.bins, "batch": c.calib_batch, "dynamic_batch": dynamic_batch(base)}
        if (
            ctx.parallel is not None
            and len(ctx.feeds.runs) >= PARALLEL_MIN_RUNS
            and not weights.is_mapped_model(probe)
        ):
            # workers elsewhere get the serialized probe (a mapped model's weights stay here)
            data = probe.SerializeToString()
            del probe
            stats = collect_stats_split(data, outputs_read, ctx.feeds.runs, ctx.parallel, **kw)
        else:
            keep = [o.name for o in base.graph.output]
            stats = collect_stats(
                probe,
                outputs_read,
                ctx.feeds.runs,
                progress=ctx.progress,
                outputs=outputs,
                keep=keep,
                alone=alone,
                **kw,
            )
            del probe
        return self._ranges({t: stats[out] for t, out in exposed.items()}, smoothed, linear)

    def _ranges(
        self, by_tensor: dict[str, TensorStats], smoothed: set[str], linear: set[str]
    ) -> dict[str, tuple[float, float]]:
        """Each tensor's range from its statistics: the ``smoothed`` MatMul inputs' by
        ``smoothed_calibrator``, the other ``linear`` layer inputs' by ``linear_calibrator``,
        the rest by ``calibrator``."""
        c = self.config
        cal = make_calibrator(c.calibrator, c.percentile)
        cal_smoothed = make_calibrator(c.smoothed_calibrator or c.calibrator, c.percentile)
        cal_linear = make_calibrator(c.linear_calibrator or c.calibrator, c.percentile)
        sym = c.activations == "int8-sym"

        def pick(t: str) -> Any:
            return cal_smoothed if t in smoothed else cal_linear if t in linear else cal

        return {t: pick(t).range(s, symmetric=sym) for t, s in by_tensor.items() if not s.empty}

    def _body_plan(
        self, graph: Any, plan_kw: dict[str, Any], ctx: PassContext
    ) -> tuple[list[str], set[str], list[str]]:
        """(site keys ``<scope>::<node>``, tensors to calibrate, notes) over every If/Loop/Scan
        body of ``graph`` (the main graph's are planned by the caller)."""
        exclude = set(self.config.exclude)
        sites: list[str] = []
        tensors: set[str] = set()
        notes: list[str] = []
        for scope, g in scope_graphs(graph):
            if not scope:
                continue
            allowed = [
                n.name
                for n in g.nodes
                if n.op in (*CANDIDATES, "Gather")
                and n.name not in exclude
                and n.op not in exclude
                and ctx.allow(site_key(scope, n.name))
            ]
            plan = make_plan(g, set(allowed), **plan_kw)
            sites += [
                site_key(scope, s) for s in allowed if s in plan.sites or s in plan.embeddings
            ]
            tensors.update(plan.tensors())
            notes += [f"in {scope}: {n}" for n in plan.notes]
        return sites, tensors, notes

    def _weighted(self, build: Builder, plan: Plan) -> dict[str, int | None]:
        """Weighted sites -> the per-channel axis their weight is quantized on."""
        return {
            name: (site.axis if build.per_axis_ok else None)
            for name, site in plan.sites.items()
            if site.weight is not None
        }

    def _weights(
        self, build: Builder, plan: Plan, ctx: PassContext, notes: list[str], details: dict
    ) -> None:
        """Learned rounding, and data-free bias correction (which needs the rounded weights)."""
        c = self.config
        if self._rounding == "adaround":
            build.weights, why, details["adaround"] = learn_rounding(
                build.base,
                self._weighted(build, plan),
                ctx.feeds.runs,
                iterations=c.adaround_iterations,
                seed=c.seed,
                reduce_range=build.reduce_range,
                progress=ctx.progress,
            )
            notes += why[:20]
        if c.bias_correction == "data-free":
            shifts, why = data_free_shifts(
                build.base,
                ctx.original,
                self._weighted(build, plan),
                build.weights,
                reduce_range=build.reduce_range,
            )
            notes += why[:10] + [f"bias correction (data-free): {len(shifts)} layers"]
            build.shifts = shifts

    def _feed_back(
        self,
        build: Builder,
        axes: dict[str, int | None],
        sites: list[str],
        ctx: PassContext,
        notes: list[str],
        details: dict,
        learned: dict[str, tuple[Any, np.ndarray | None]] | None = None,
    ) -> None:
        """``rounding="gptq"``: the weights of the static int8 ``sites`` rounded with error
        feedback (:mod:`.gptq`), after the search, on the layers it keeps int8 only (or on
        those of the model the search has the manager check first, its ``finish``): the
        search judges rounding to nearest, whose output error the feedback lowers, and it
        costs a pass over the data with those layers' inputs exposed (all 63 layers of the
        PP-OCRv5 recognizer: 17 s; the one it keeps, its CTC head: one pass). Their bias
        corrections, measured for rounding to nearest, move by the mean output change of the
        new weights, ``E[x]·(W_feedback − W_nearest)`` (dropped, the recognizer's all-int8
        model read 83 % of the held-out crops against 88 % rounded to nearest). ``learned``:
        each layer's weights and bias move learned by an earlier call (it gets this one's)."""
        c = self.config
        learned = {} if learned is None else learned
        names = {
            s: axes[s] for s in sites if s in axes and s not in build.weights and s not in learned
        }
        if names:
            moved: dict[str, np.ndarray] = {}
            got, why, cost = learn_rounding(
                build.base,
                names,
                ctx.feeds.runs,
                iterations=c.adaround_iterations,
                seed=c.seed,
                reduce_range=build.reduce_range,
                method="gptq",
                progress=ctx.progress,
                moved=moved,
                rows=build.rows,
            )
            learned.update({s: (w, moved.get(s)) for s, w in got.items()})
            if "gptq" in details:  # a second call: the model checked first's layers, then more
                cost = {k: round(details["gptq"][k] + v, 2) for k, v in cost.items()}
            details["gptq"] = cost
            notes += why[:20]
        for s in sites:
            if s in learned and s not in build.weights:
                w, change = learned[s]
                build.weights[s] = w
                if change is not None and s in build.shifts:
                    build.shifts[s] = build.shifts[s] + change

    def _instrument(
        self, build: Builder, plan: Plan, ctx: PassContext, notes: list[str], details: dict
    ) -> dict[str, SiteStats]:
        """One instrumented run: every site's shift and SQNR; empirical bias correction."""
        c = self.config
        empirical = c.bias_correction == "empirical"
        if not empirical and not (ctx.budget is not None and c.fallback):
            return {}
        params = group_params(plan, build.ranges, build.activations)
        probe = Instrument(
            build.base,
            plan,
            params,
            build.weights,
            per_axis=build.per_axis_ok,
            reduce_range=build.reduce_range,
            dynamic=c.dynamic_fallback,
        ).build()
        notes += [f"sensitivity: {s}" for s in probe.skipped[:10]]
        runs = ctx.feeds.subset(max(c.sensitivity_runs, 1)).runs  # spread, as everywhere
        stats = measure_sensitivity(
            build.base,
            probe,
            runs,
            batch=c.calib_batch,
            dynamic_batch=dynamic_batch(build.base),
            progress=ctx.progress,
            parallel=ctx.parallel if len(runs) >= PARALLEL_MIN_RUNS else None,
        )
        if empirical:
            build.shifts = {
                k: s.shift for k, s in stats.items() if plan.sites[k].weight is not None
            }
            notes.append(f"bias correction (empirical): {len(build.shifts)} layers")
        details["sensitivity"] = {
            k: {
                "sqnr_db": _round(s.sqnr(k in build.shifts)),
                "dynamic_db": _round(s.sqnr_dynamic),
            }
            for k, s in sorted(stats.items(), key=lambda kv: kv[1].sqnr())[:30]
        }
        return stats

    def _latency(
        self,
        build: Builder,
        model: onnx.ModelProto,
        sites: list[str],
        ctx: PassContext,
        notes: list[str],
        details: dict,
        race: bool = True,
    ) -> tuple[list[str], dict[str, float], float]:
        """Leave in float the sites int8 makes slower on this CPU. Returns (sites, gain per
        site in µs, the float model's time in µs). ``race``: the placement with those sites
        float is raced whole against all-int8 (:func:`.latency.pays_as_a_whole`); without it
        (see :data:`FLOOR_FIRST`), a trusted profile's placement is kept as it is."""
        if not self.config.latency_aware or ctx.allow_slower:
            return sites, {}, 0.0
        feed = self._timing_feed(ctx)
        att = lat.Attribution(build.base, set(sites))
        weightless = {s for s in sites if att.weightless(s)}
        raced = None  # the race's all-int8 / reduced time, when it kept the slower layers int8
        placement_raced = None  # the race's reduced / all-int8 time
        try:
            enabled, slow_all, gains, all_int8 = list(sites), [], {}, None
            kept: dict[str, float] = {}  # slightly slower (µs), between int8 layers: stay int8
            all_int8_us = 0.0  # the all-int8 model's profiled time
            for k in range(LATENCY_ROUNDS):
                candidate = build(set(enabled))
                if all_int8 is None:  # the first round's: every site in int8
                    all_int8 = candidate
                seconds = LATER_ROUND_SECONDS if k else FIRST_ROUND_SECONDS
                # the float model is the same in every round: profiled once (alone, a model
                # reads within 2 % from profile to profile; MobileNetV2 at batch 32: 0.2 s a
                # later round)
                profiles = lat.measure_all(
                    [candidate] if k else [build.base, candidate], feed, att, seconds=seconds
                )
                int8_t = profiles[-1]
                if not k:
                    float_t, all_int8_us = profiles[0], int8_t.total_us
                slower, g = lat.slower_sites(float_t, int8_t, enabled, weightless)
                if k:  # only a neighbour of a layer that went float has a new context
                    near = {n for s in slow_all for n in lat.neighbours(att, s)}
                    slower = [s for s in slower if s in near]
                    g = {s: v for s, v in g.items() if s in near}
                gains.update(g)
                slower = [s for s in slower if s not in set(kept)]
                spent = sum(kept.values())
                more = lat.back_to_int8(att, slower, gains, float_t.total_us, set(slow_all), spent)
                kept.update({s: max(-gains[s], 0.0) for s in more})
                slower = [s for s in slower if s not in set(more)]
                if not slower or len(slower) == len(enabled):
                    slow_all += slower if len(slower) == len(enabled) else []
                    break
                slow_all += slower
                enabled = [s for s in enabled if s not in set(slower)]
                if not lat.profile_trusted(float_t.total_us):
                    # its totals untrusted, the whole-model race below decides: a later
                    # round would only refine the profile's placement (the digits ResNet:
                    # 0.7 s for two rounds whose placement the race then found 2.4x slower)
                    break
                if _estimate(int8_t, gains, slower) >= float_t.total_us:
                    # no faster than float even before the new float boundaries' Q/DQ cost:
                    # another round only adds those (the PP-OCRv5 classifier: 1.7 s)
                    break
            est = _estimate(int8_t, gains, slower)
            # one kept in an early round whose neighbour went float later is alone: float too
            alone = [s for s in kept if not lat.between_int8(att, s, set(slow_all))]
            kept = {s: us for s, us in kept.items() if s not in set(alone)}
            slow_all += alone
            # layers kept int8 for their size first: the race below times the placement kept
            sized = lat.kept_for_size(
                build.base, att, slow_all, gains, float_t.total_us, sum(kept.values())
            )
            if sized:
                slow_all = [s for s in slow_all if s not in set(sized)]
                slower_us = sum(max(-gains.get(s, 0.0), 0.0) for s in sized)
                notes.append(
                    f"kept int8 for their size: {len(sized)} layer{'s' if len(sized) > 1 else ''} "
                    f"measured slower in int8 ({slower_us:.0f} µs in all, "
                    f"{slower_us / float_t.total_us:.1%} of the float model's time) whose weights "
                    f"hold {lat.SIZE_SHARE:.0%} or more of the model's: {', '.join(sized[:5])}"
                )
            if (
                slow_all
                and est >= float_t.total_us
                and not lat.may_beat_float(all_int8_us, float_t)
            ):
                pass  # neither all-int8 nor this placement beats float: _no_gain says so
            elif slow_all and not race and lat.profile_trusted(float_t.total_us):
                notes.append(
                    f"latency: {len(slow_all)} layers measured slower in int8 go float, as "
                    "the profile has it (not raced whole: the budget is a task metric, whose "
                    "search scores the model with the fewest int8 layers first)"
                )
            elif slow_all:  # the layers' profile times, not the model's: check the whole
                # always raced: the profile's totals are sums of kernel times, and on an AMD
                # EPYC they put a MobileNetV2 with 4 layers float 11 % ahead of all-int8 where
                # whole runs, interleaved, put it 18 % behind (2.36x against 2.79x of fp32)
                reduced = build(set(sites) - set(slow_all))
                r = lat.pays_as_a_whole(all_int8, reduced, feed)
                placement_raced = round(r.reversed().ratio, 3)  # placement / all-int8
                if lat.float_pays(r):
                    notes.append(
                        f"latency: {len(slow_all)} layers measured slower in int8 go float: the "
                        f"model is {lat.FLOAT_MARGIN:.0%} or more faster with them float "
                        f"({r.reversed().describe()})"
                    )
                else:
                    # a tie keeps in int8 the layers int8 makes smaller (their weights) and
                    # the elementwise sites (float would add a Q/DQ pair), and leaves float
                    # the layers without weights: with no speed or size to show for it, int8
                    # only costs them accuracy (all-MiniLM-L6-v2's six attention-probability
                    # MatMuls: cosine 0.99802 float against 0.99767 in int8)
                    # The layers without weights stay int8 only when the model is
                    # SPEED_MARGIN faster with them, the gain the pass asks of int8 as a whole:
                    # less is not worth their error (all-MiniLM-L6-v2 raced 0.97x with its 12
                    # attention MatMuls int8, and read cosine 0.9977 against 0.9979). The
                    # layers with weights go float only FLOAT_MARGIN faster (lat.float_pays)
                    paid = r.b_faster and r.ratio <= 1.0 - mixed.SPEED_MARGIN
                    tie = [] if paid else [s for s in slow_all if s in weightless]
                    if r.b_faster:
                        why = "the model is faster with them in int8"
                    elif lat.float_faster(r):
                        why = (
                            f"the model is less than {lat.FLOAT_MARGIN:.0%} faster with them float"
                        )
                    else:
                        why = "the model with them float is not faster beyond noise"
                    if len(tie) < len(slow_all):
                        notes.append(
                            f"latency: {len(slow_all) - len(tie)} layers measured slower in "
                            f"int8 stay int8: {why} ({r.describe()})"
                        )
                    if tie:
                        if r.b_faster:
                            why = (
                                f"the model is less than {mixed.SPEED_MARGIN:.0%} faster with "
                                "them in int8"
                            )
                        elif lat.float_faster(r):
                            why = "the model is faster with them float"
                        notes.append(
                            f"latency: {len(tie)} layers measured slower in int8 with no "
                            f"weights stay float: {why}, and int8 would make them no smaller "
                            f"({r.describe()})"
                        )
                    slow_all = tie
                    est = all_int8_us
                    raced = round(r.ratio, 3)  # measured: trusted over the profile's totals
        except Exception as e:  # noqa: BLE001 - profiling is an optimization, never fatal
            notes.append(f"latency not measured ({type(e).__name__}: {e}); every site kept")
            return sites, {}, 0.0
        if kept:
            names = ", ".join(list(kept)[:5]) + (
                f" and {len(kept) - 5} more" if len(kept) > 5 else ""
            )
            notes.append(
                f"kept int8: {len(kept)} layer{'s' if len(kept) > 1 else ''} measured slightly "
                "slower in int8 "
                f"({min(kept.values()):.0f}-{max(kept.values()):.0f} µs each) between int8 layers, "
                f"where float would add a DequantizeLinear and a QuantizeLinear: {names}"
            )
        for s in slow_all:
            tf = float_t.owners.get(s, 0.0)
            notes.append(
                f"left float: {s}: slower in int8 on this CPU "
                f"({tf - gains[s]:.0f} µs in int8 vs {tf:.0f} µs in float)"
            )
        details["latency"] = {
            "float_us": round(float_t.total_us, 1),
            "int8_us": round(int8_t.total_us, 1),
            "int8_est_us": round(est, 1),  # the placement chosen, as the profile times it
            "slower_in_int8": slow_all,
            "all_int8_raced": raced,
            # the placement with every layer measured slower float, raced against all-int8
            "float_left_raced": placement_raced,
            "gain_us": {
                k: round(v, 1) for k, v in sorted(gains.items(), key=lambda kv: kv[1])[:50]
            },
        }
        return [s for s in sites if s not in set(slow_all)], gains, float_t.total_us

    def _whole_gain(
        self,
        build: Builder,
        model: onnx.ModelProto,
        sites: list[str],
        body_sites: list[str],
        ctx: PassContext,
        details: dict,
        probe: mixed.SpeedProbe | None = None,
    ) -> tuple[str, tuple[mixed.SpeedProbe, tuple[float, float]] | None]:
        """Why int8 does not pay ("" when it does): the model with the sites the profile
        kept in int8, timed in turns with the float one (:class:`.mixed.SpeedProbe`), is not
        :data:`.mixed.SPEED_MARGIN` faster (a reading near the margin twice:
        :func:`.mixed.timed_again`). Run when the profile finds a gain below
        :data:`SURE_GAIN` on a model within :data:`MEMO_MAX_BYTES` (the probe holds a float
        session through the search): the profile sums layer times, and on the PP-OCRv5
        detector it read 2-6 % faster where the manager's race read 1.00x, after a
        calibration and a search that cost 20-40 s. Returns (why, (the probe, its timing)),
        both kept for the search; a model that cannot be timed gives ("", None): timing only
        saves work here. ``probe``: one already timing the float model (its session reused)."""
        if probe is None:
            probe = mixed.SpeedProbe(model, self._timing_feed(ctx))
        candidate = build(set(sites) | set(body_sites))
        try:
            ms, ratio = probe(candidate)
            if mixed.timed_again(ratio):
                ms, ratio = mixed.two_readings((ms, ratio), probe(candidate))
        except Exception as e:  # noqa: BLE001 - the search and the manager's race time it too
            logger.info("the int8 placement was not timed whole: %s", e)
            return "", None
        timing = details.setdefault("latency", {})
        key = "whole_model" if "whole_model" not in timing else "core_model"
        timing[key] = {"int8_ms": round(ms, 4), "ratio": round(ratio, 4), "layers": len(sites)}
        if ratio < 1.0 - mixed.SPEED_MARGIN:
            return "", (probe, (ms, ratio))
        why = (
            f"int8 does not make this model faster on this CPU: with the {len(sites)} layers "
            f"its latency profile keeps in int8 it runs in {ratio:.2f}x the float model's time "
            f"({ms:.3g} ms, timed in turns with it; it must be {mixed.SPEED_MARGIN:.0%} faster); "
            "the model stays float (--allow-slower quantizes it anyway)"
        )
        return why, (probe, (ms, ratio))

    @staticmethod
    def _timing_feed(ctx: PassContext) -> dict:
        """The feed the latency profile and the manager's race time models on (the manager
        sets it: ``--latency-batch``'s batch, else the median-size run of all the data)."""
        return ctx.feeds.timing_feed()

    def _mixed(
        self,
        model: onnx.ModelProto,
        build: Builder,
        sites: list[str],
        stats: dict[str, SiteStats],
        gains: dict[str, float],
        total_us: float,
        ctx: PassContext,
        notes: list[str],
        details: dict,
        body_sites: list[str],
        speed: tuple[mixed.SpeedProbe, tuple[float, float]] | None = None,
        reference: list[dict[str, np.ndarray]] | None = None,
        axes: dict[str, int | None] | None = None,
        floor_first: bool = False,
    ) -> tuple[onnx.ModelProto, list[str], list[list[str]], list[int], list[float]]:
        """Mixed precision over the main graph's sites until ``ctx.budget`` holds
        (:mod:`.mixed`; ``body_sites`` stay int8; ``speed``: :meth:`_whole_gain`'s probe and
        timing; ``reference``: ``model``'s outputs on the scored runs read already, None for
        a run still to run). Returns (model, main-graph sites kept, the manager's fallbacks: the sites
        kept at the prefixes above the chosen one found within budget, the indices of those
        the verification runs passed already, the probe's turns timing the model's graph
        against ``model``: :attr:`PassResult.timed_rounds`)."""
        from onnxopt.runner import Runner
        from onnxopt.verify import accuracy

        c = self.config
        runner = ctx.runner if ctx.runner is not None else Runner()
        feeds = ctx.feeds.subset(c.fallback_runs)
        if reference is None or len(reference) != len(feeds):
            reference = [None] * len(feeds)
        missing = [i for i, r in enumerate(reference) if r is None]
        if missing:
            ran = iter(runner.run(model, Feeds([feeds.runs[i] for i in missing])))
            reference = [r if r is not None else next(ran) for r in reference]
        wants = feeds.labels is not None and (
            ctx.budget.metric is None or ctx.budget.max_accuracy_drop is not None
        )
        ref_acc = accuracy(reference, feeds.labels) if wants else None
        judge = Judge(runner, feeds, reference, ctx.budget, ref_acc)
        if ctx.measure_candidates:  # the report's trade-off plot: time every step
            judge.timing_feed = feeds.timing_feed()

        def with_bodies(enabled: set[str], dynamic: set[str] | frozenset = frozenset()) -> Any:
            return build(set(enabled) | set(body_sites), dynamic)

        moves = mixed.order_moves(
            sites,
            stats,
            gains,
            total_us=total_us,
            corrected=set(build.shifts),
            dynamic=c.dynamic_fallback,
        )
        probe, timed = speed if speed is not None else (None, None)
        if probe is None and c.latency_aware and not ctx.allow_slower and _memo_fits(model):
            # the probe holds a float session (a copy of the weights) through the search:
            # only for models whose weights are at most MEMO_MAX_BYTES
            probe = mixed.SpeedProbe(model, self._timing_feed(ctx))
        slow = len(details.get("latency", {}).get("slower_in_int8", []))
        #: models ``precheck`` judged as the pass would return them (error feedback applied),
        #: by their (static int8, dynamic) sites: the chosen one is returned as it was checked
        finished: dict[tuple[frozenset[str], frozenset[str]], onnx.ModelProto] = {}
        #: error feedback's weights and bias moves by layer, learned once: error feedback
        #: reads the float model's layer inputs, so a layer's does not depend on the others
        learned: dict[str, tuple[Any, np.ndarray | None]] = {}
        finish = None
        if ctx.precheck is not None and self._rounding == "gptq" and axes is not None:

            def finish(floats: set[str], dyn: set[str]) -> onnx.ModelProto:
                # the search goes on judging rounding to nearest, as its assumptions are
                # about (a version that left these layers' feedback in its later models read
                # 22-37 s on the PP-OCRv5 recognizer at 2 points, where this one reads 21-26
                # s); the final model takes the weights learned here
                kept = [s for s in sites if s not in floats and s not in dyn]
                weights, shifts = dict(build.weights), dict(build.shifts)
                self._feed_back(build, axes, kept, ctx, notes, details, learned)
                m = with_bodies(set(kept) | set(dyn), set(dyn))
                build.weights, build.shifts = weights, shifts
                finished[(frozenset(kept), frozenset(dyn))] = m
                return m

        res = mixed.search(
            with_bodies,
            sites,
            moves,
            judge.deployed_score,
            already_float=slow,
            progress=ctx.progress,
            confirm=judge.literal_score,
            float_at_end=not body_sites,  # body sites stay int8 whatever the search does
            speed=probe,
            speed_all_int8=timed,
            target=judge.target(),
            profile_us=_bound_us(total_us, gains, sites, details.get("latency")),
            precheck=ctx.precheck,
            floor_first=floor_first,
            finish=finish,
        )
        if not res.met and res.not_faster_at == 0 and probe is not None:
            res = self._alone(
                res, with_bodies, sites, gains, total_us, build, probe, judge, notes, slow
            )
        if probe is not None:
            head = judge.reference_head()
            # untimed when the search timed nothing (all int8 met the budget at once)
            float_ms = probe.float_ms if probe.ref_times else None
            res.tradeoff.append(
                {
                    "float_layers": len(sites) + slow,
                    "dynamic_layers": 0,
                    "metric": round(head, 6),
                    "ok": True,
                    "latency_ms": round(float_ms, 4) if float_ms is not None else None,
                    "reference": True,
                }
            )
            if res.met and res.speed_ratio is not None:
                notes.append(
                    f"mixed precision: the model chosen runs in {res.speed_ratio:.2f}x the "
                    "float model's time (timed in turns with it)"
                )
        # the candidate the search scored and chose (the report marks its row; the search
        # marked its point of the curve), before the layers its choice left alone go float
        chosen = step_label(res.floats, res.dynamic, slow) if res.met else None
        details["tradeoff_axes"] = {
            "metric": _headline_name(ctx.budget, ref_acc),
            "floor": judge.target(),
            "layers": len(sites) + slow,
        }
        lone = _isolated(build.base, res, sites, gains) if res.met else []
        if lone:
            res.floats = sorted(set(res.floats) | set(lone))
            notes.append(
                f"left float after the search: {len(lone)} layer{'s' if len(lone) > 1 else ''} "
                "the profile measured slower in int8, kept for the int8 layers around them, "
                f"which the search returned to float: {', '.join(lone[:5])}"
            )
        _record(res, details, notes)
        kept = [s for s in sites if s not in set(res.floats) | set(res.dynamic)]
        details["candidates"] = _steps(judge, model, ref_acc, chosen)
        model_out = finished.get((frozenset(kept), frozenset(res.dynamic)))
        if model_out is None:
            if self._rounding == "gptq" and axes is not None:
                self._feed_back(build, axes, kept, ctx, notes, details, learned)
            model_out = with_bodies(set(kept) | set(res.dynamic), set(res.dynamic))
        fallbacks = [[s for s in sites if s not in set(f)] + body_sites for f, _ in res.fallbacks]
        if ctx.memo and self.name in ctx.memo:  # re-runs keep these MatMuls dynamic
            first = ctx.memo[self.name]
            first.dynamic = set(res.dynamic)
            first.fallback_dynamic = {
                frozenset(fb): set(d) for fb, (_, d) in zip(fallbacks, res.fallbacks, strict=True)
            }
        verified = [] if res.verified_fallback is None else [res.verified_fallback]
        turns = probe.turns_of(model_out) if probe is not None and res.met else []
        return model_out, kept + res.dynamic, fallbacks, verified, turns

    def _alone(
        self,
        res: mixed.Plan,
        with_bodies: Callable[..., onnx.ModelProto],
        sites: list[str],
        gains: dict[str, float],
        total_us: float,
        build: Builder,
        probe: mixed.SpeedProbe,
        judge: Judge,
        notes: list[str],
        already_float: int = 0,
    ) -> mixed.Plan:
        """The search found the model with every site int8 no faster than float, and stopped:
        fewer int8 layers gain less, as a rule. Not when the int8 layers' glue (the Q/DQ pairs
        and the float ops between int8 layers) costs more than most of them save, which the
        slow regime of an AMD EPYC does: its largest layers alone (:func:`_cores`, as the
        placement tries them) can still pay. Each is timed with the search's probe and, when
        :data:`.mixed.SPEED_MARGIN` faster, scored and confirmed; the first within budget is
        the plan (PP-OCRv5's recognizer at a 2-point budget: all 32 layers int8 at 1.13x
        float's time, its CTC head alone, dynamic int8, at 0.89x and one crop of 66 changed).
        ``res`` is returned, its trade-off curve extended, when none pays. ``already_float``:
        the layers the placement left float, counted in the curve's points."""
        for core in _cores(sites, gains, total_us, build.always_dynamic):
            model = with_bodies(set(core))
            # the search's label for this model, so that the report marks its row chosen
            label = step_label(set(sites) - set(core), set(), already_float)
            ms, ratio = probe(model)
            dyn = len(set(core) & build.always_dynamic)
            floats = len(sites) - len(core) + already_float  # as the search's points count
            point = {"float_layers": floats, "dynamic_layers": dyn}
            point["latency_ms"] = round(ms, 4) if math.isfinite(ms) else None
            if not ratio < 1.0 - mixed.SPEED_MARGIN:
                continue
            good, why, head = judge.deployed_score(model, label)
            if good:
                good, why, head = judge.literal_score(model, label)
            res.evaluations += 1
            res.tradeoff.append({**point, "metric": round(head, 6), "ok": good, "chosen": good})
            if not good:
                continue
            notes.append(
                f"int8 pays on {len(core)} layer{'s' if len(core) > 1 else ''} alone: with "
                f"every layer int8 the model was not {mixed.SPEED_MARGIN:.0%} faster than "
                f"float; its largest layers ({', '.join(core[:5])}) run in {ratio:.2f}x "
                "float's time and hold the budget"
            )
            return mixed.Plan(
                floats=sorted(set(sites) - set(core)),
                moves=res.moves,
                tradeoff=res.tradeoff,
                evaluations=res.evaluations,
                speed_ratio=ratio,
            )
        return res


def _isolated(
    base: onnx.ModelProto, res: mixed.Plan, sites: list[str], gains: dict[str, float]
) -> list[str]:
    """The sites the search kept int8 that the latency profile measured slower in int8
    (kept by the placement between int8 layers, where float would add a Q/DQ pair) and that
    a neighbour's return to float in the search left no longer between int8 layers: alone,
    they only add their slowdown and their error (one the whole-model race kept int8, its
    neighbours untouched, stays). On PP-OCRv5's recognizer two Sigmoids stayed int8 beside
    its CTC head; when the head failed the held-out check, the manager's bisection kept them
    alone (two verifications), and its race rolled that model back at 1.00x. Repeated until
    none is left (one going float can leave another alone)."""
    out: list[str] = []
    floats = set(res.floats) | set(res.dynamic)
    kept = [s for s in sites if s not in floats]
    slow = [s for s in kept if gains.get(s, 0.0) < 0.0]
    if not slow:
        return out
    att = lat.Attribution(base, set(sites))
    while True:
        moved = floats | set(out)
        lone = [
            s
            for s in slow
            if s not in out
            and any(n in moved for n in lat.neighbours(att, s))
            and not lat.between_int8(att, s, moved)
        ]
        if not lone:
            return out
        out += lone


#: error feedback's input rows drawn in the calibration's pass, at most (all-MiniLM-L6-v2's
#: 36 linear layers: 2048 rows of 384 or 1536 inputs, 165 MB)
ROWS_MAX_BYTES = 256 << 20

#: a scored run at least this large (input bytes) is calibrated alone, so that its outputs serve
#: as the search's reference: concatenating runs this large saves little
ALONE_MIN_BYTES = 1 << 20
#: the first run's prepared model stays in the memo while the manager verifies (and perhaps
#: bisects) its candidate, and the search's speed probe holds a float session: only for models
#: whose weights are at most this (held in memory or mapped from files: the 90 MB MiniLM is
#: mapped, and without the memo a candidate that failed verification was bisected from scratch,
#: 15 trials, 109 s for the pass, where the search's next candidates were at hand)
MEMO_MAX_BYTES = 256 << 20


def _memo_fits(model: onnx.ModelProto) -> bool:
    """Whether keeping a copy of ``model`` for the bisection trials is cheap enough."""
    return weights.weight_bytes(model) <= MEMO_MAX_BYTES


@dataclass
class _First:
    """What a pass's first run leaves for its bisection trials (:attr:`PassContext.memo`):
    its builder (prepared, smoothed model; calibrated ranges; bias shifts), the sites its
    latency placement kept, and its notes up to there."""

    build: Builder
    sites: list[str]
    body_sites: list[str]
    notes: list[str]
    plan_notes: list[str]
    #: the MatMuls the search sent to dynamic int8 (a trial keeps them dynamic)
    dynamic: set[str] = field(default_factory=set)
    #: each fallback offered to the manager (its sites) -> its dynamic MatMuls
    fallback_dynamic: dict[frozenset[str], set[str]] = field(default_factory=dict)


def _trial(first: _First, ctx: PassContext) -> PassResult:
    """A bisection trial: the first run's model with only the allowed sites in int8."""
    sites = [s for s in first.sites if ctx.allow(s)]
    body = [s for s in first.body_sites if ctx.allow(s)]
    note = "bisection trial: the first run's calibration and placement, the allowed sites int8"
    if not sites and not body:
        return PassResult(False, 0, [*first.notes, note])
    build = first.build
    # one of the search's fallbacks keeps its own dynamic MatMuls; a bisection subset, those
    # of the search's choice
    dynamic = first.fallback_dynamic.get(frozenset(sites) | frozenset(body))
    model = build(
        set(sites) | set(body), dynamic if dynamic is not None else first.dynamic & set(sites)
    )
    counts = dict(build.inserter.counts) if build.inserter else {}
    notes = [*first.notes, note, *(build.inserter.notes if build.inserter else [])]
    notes += first.plan_notes
    kept = sites + body
    return PassResult(True, len(kept), notes, sites=kept, details={"counts": counts}, model=model)


def _bound_us(
    total_us: float, gains: dict[str, float], sites: list[str], timing: dict | None
) -> float:
    """The float model's profiled time for the search's profile bound (``mixed.search``'s
    ``profile_us``), or 0 for no bound: the profile's totals must be trusted, and its per-layer
    gains must account for at least the whole gain it timed for int8 (a layer the profile
    cannot attribute has no gain, and a bound on such gains would refuse fast prefixes). A
    whole-model race that kept every layer int8 overrode the profile: no bound then either."""
    if not timing or timing.get("all_int8_raced") or not lat.profile_trusted(total_us):
        return 0.0
    whole = timing.get("float_us", 0.0) - timing.get("int8_us", 0.0)
    credited = sum(max(gains.get(s, 0.0), 0.0) for s in sites)
    return total_us if credited >= whole else 0.0


def _linear_inputs(plan: Plan) -> set[str]:
    """The activation inputs of the plan's MatMul and Gemm sites with a constant weight."""
    return {
        site.node.inputs[i].name
        for site in plan.sites.values()
        if site.node.op in ("MatMul", "Gemm") and site.weight is not None
        for i in site.acts
    }


def _cores(
    sites: list[str], gains: dict[str, float], total_us: float, wide: set[str]
) -> list[list[str]]:
    """The subsets of the placement ``sites`` timed alone when it does not pay as a whole:
    the sites whose int8 saves :data:`CORE_SHARE` or more of the float model's profiled time
    (``total_us``) each, then the wide linear layers among them (``wide``, which int8 speeds
    with no int8 neighbour: :func:`_wide_linear`), in ``sites``' order; none without a
    trusted profile. A subset is timed only when it is at most half the placement: one that
    differs from it by a few layers would only repeat its timing."""
    if total_us <= 0 or not lat.profile_trusted(total_us):
        return []
    core = [s for s in sites if gains.get(s, 0.0) >= CORE_SHARE * total_us]
    out = [core, [s for s in core if s in wide]]
    out = [c for i, c in enumerate(out) if c and c not in out[:i]]
    return [c for c in out if 2 * len(c) <= len(sites)]


def _wide_linear(plan: Plan) -> set[str]:
    """The plan's MatMul and Gemm sites with a constant weight of at least :data:`WIDE_RATIO`
    times as many outputs as inputs: they go dynamic int8 whenever they are int8. Their
    input's quantization, at run time, costs 1/N of their product, and nothing downstream
    reads their output in int8, so a static range buys them next to no speed; and a static
    range clips inputs the calibration never saw (PP-OCRv5's CTC head, 120 inputs to 18,385
    classes: calibrated to 15.1 on the learning half, up to 17.3 on the rest, it read 2 of 60
    held-out pages differently from fp32; dynamic, none, in 0.91x float's time)."""
    from .dynamic import QuantizeDynamic

    out = set()
    for name, site in plan.sites.items():
        node = site.node
        if node.op not in ("MatMul", "Gemm") or site.weight is None:
            continue
        w = const_value(node.inputs[site.weight])
        if w is None or w.ndim != 2 or QuantizeDynamic._eligible(node):
            continue
        k, n = w.shape[::-1] if node.op == "Gemm" and node.attrs.get("transB", 0) else w.shape
        if n >= WIDE_RATIO * k:
            out.add(name)
    return out


def _estimate(int8_t: Any, gains: dict[str, float], slower: list[str]) -> float:
    """A profile round's int8 model time (µs) less what its newly slower layers cost in int8."""
    return int8_t.total_us + sum(min(gains[s], 0.0) for s in slower)


def _profile_gain(timing: dict | None) -> float:
    """The fraction of float's time the latency profile's int8 placement saves (0 without
    a profile)."""
    if not timing or not timing.get("float_us"):
        return 0.0
    return 1.0 - timing.get("int8_est_us", timing["int8_us"]) / timing["float_us"]


def _no_gain(timing: dict | None, above: float = NO_GAIN_ABOVE) -> str:
    """Why int8 cannot make the model faster ("" when it may): the latency profile's last
    int8 model, with the layers measured slower left float (those found in the last round
    taken off by their measured cost), takes ``above`` (:data:`NO_GAIN_ABOVE`) times the float
    model's time or more (nearer, or on a model too short for the profile's totals,
    :meth:`QuantizeInt8._whole_gain` times the model whole). A whole-model race that kept
    every layer int8 measured what the profile only estimates: then there is no such
    reason."""
    if not timing or not timing.get("float_us") or timing.get("all_int8_raced"):
        return ""
    f, q = timing["float_us"], timing.get("int8_est_us", timing["int8_us"])
    if q < f * above or not lat.profile_trusted(f):  # may pay: timed whole where it can be
        return ""
    return (
        f"int8 does not make this model faster on this CPU: its profile times the int8 model, "
        f"with the layers measured slower left float, at {q:.0f} µs against {f:.0f} µs in "
        "float; the model stays float (--allow-slower quantizes it anyway)"
    )


def _record(res: Any, details: dict, notes: list[str]) -> None:
    """The mixed-precision search's outcome into the pass's details and notes."""
    details["tradeoff"] = res.tradeoff
    details["float_nodes"] = [
        {
            "node": m.site,
            "to": m.to,
            "sqnr_db": _round(m.sqnr_db),
            "gain_us": round(m.gain_us, 1),
        }
        for m in res.moves
        if m.site in set(res.floats) | set(res.dynamic)
    ]
    if not res.met:  # its floats are every move's: no placement was found (the reason says why)
        first = (
            "the model with the fewest int8 layers the search could keep, scored first, ends it"
            if res.floor_ended
            else "fully quantized model misses the budget"
        )
        # first among the pass's notes: the console shows the first few, and the latency
        # placement's can be many (the PP-OCRv5 detector: 75 "left float" lines before why
        # int8 stayed out)
        notes[:0] = [
            f"{first}; mixed precision found no placement "
            f"({res.evaluations} model{'s' if res.evaluations != 1 else ''} tried)",
            res.reason,
        ]
    elif res.floats or res.dynamic:
        notes.append(
            f"fully quantized model misses the budget; mixed precision: {len(res.floats)} "
            f"float, {len(res.dynamic)} dynamic int8 ({res.evaluations} models tried)"
        )
    for r in details["float_nodes"][:20] if res.met else []:
        notes.append(
            f"kept {r['to']}: {r['node']}: SQNR {r['sqnr_db']} dB, saves {r['gain_us']} µs in int8"
        )


def _headline_name(budget: Any, ref_acc: float | None) -> str:
    """What the search's headline number is (:meth:`.fallback.Judge.score`'s third): the
    task metric's name, accuracy, or the lowest cosine against the input."""
    metric = getattr(budget, "metric", None)
    if metric is not None:
        return str(getattr(metric, "name", None) or getattr(metric, "__name__", "task metric"))
    return "accuracy (%)" if ref_acc is not None else "cosine vs the input"


def _round(x: float | None) -> float | None:
    if x is None:
        return None
    return round(x, 2) if abs(x) != float("inf") else x


def _steps(
    judge: Judge, model: onnx.ModelProto, ref_acc: float | None, chosen: str | None
) -> list[dict[str, Any]]:
    """The mixed-precision steps as trade-off candidates (with the float input when timed);
    the chosen one is the step labelled ``chosen``."""
    from onnxopt.candidates import latency_or_none

    rows = [{**h, "chosen": chosen is not None and h["label"] == chosen} for h in judge.history]
    if judge.timing_feed is not None:
        rows.insert(
            0,
            {
                "label": "float (the input)",
                "ok": True,
                "cosine": 1.0,
                "accuracy": ref_acc,
                "metric": judge.ref_metric,
                "latency_ms": latency_or_none(model, judge.timing_feed, "float"),
                "chosen": False,
                "reference": True,
            },
        )
    return rows
