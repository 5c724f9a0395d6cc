"""quantize-int8: static int8 quantization with onnxopt's own calibration and QDQ insertion.

Pipeline: read aliased initializers through ``Identity`` -> optionally smooth MatMul inputs
(:mod:`.smooth`, exact in float) -> plan Q/DQ placement (:mod:`.placement`) -> expose the
planned tensors as outputs and stream their statistics over the calibration feeds
(:mod:`.calibrate`) -> per-group range = union of the members' calibrated ranges ->
parameters and insertion (:mod:`.qdq`) -> with a budget, sensitivity-ranked fallback
(:mod:`.fallback`).

Sites inside If/Loop/Scan bodies are planned, calibrated (over every loop iteration) and
quantized like the main graph's (:mod:`.bodies`).

Memory stays at about two copies of the model plus onnxruntime's: planning reads weight shapes
only, the probe model is a copy whose large weights are shared with onnxruntime (mapped, or
handed over without a copy: :mod:`onnxopt.sessions`), and statistics are streamed (bert_base,
256 samples: see benchmarks/QUANTIZATION.md).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt import weights
from onnxopt.contract import Pass, PassContext, PassError, PassResult
from onnxopt.data import Feeds
from onnxopt.graph import node_names_unique, opset_version, to_graph, to_model
from onnxopt.model import with_inferred_shapes
from onnxopt.scopes import site_key

from .bodies import scope_graphs, scoped
from .calibrate import make_calibrator
from .collect import collect_stats, collect_stats_split, probe_model
from .config import QuantizeConfig
from .fallback import Judge, rank_sites, rank_sites_split, search_fallback
from .placement import CANDIDATES, Plan, make_plan
from .qdq import Inserter, QParams, activation_params, resolve_reduce_range
from .smooth import apply_smoothing, channel_absmax, smooth_groups

logger = logging.getLogger(__name__)

MIN_SAMPLES = 16
#: with ``ctx.parallel`` (``onnxopt search`` on Ray), calibration over at least this many runs
#: and sensitivities of at least this many sites are split across workers (same results)
PARALLEL_MIN_RUNS = 32
PARALLEL_MIN_SITES = 16


class QuantizeInt8(Pass):
    """Static int8 QDQ quantization placed for onnxruntime's int8 CPU kernels.

    Configured by a :class:`.config.QuantizeConfig` (calibrator, percentile, per-channel
    weights, activation type, exclusions, fallback, smoothing, ...).
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
        notes = self._check_feeds(ctx.feeds)
        opset = opset_version(model)  # Pass.apply converted models below opset_wanted
        base, smooth_info = self._prepare(model, ctx, notes)
        plan_kw = self._plan_options(opset, notes)
        sites, probe_tensors, plan_notes = self._plan(to_graph(base), plan_kw, ctx)
        if not sites:
            return PassResult(False, 0, notes + plan_notes[:20])
        params = self._calibrate(base, probe_tensors, ctx)
        build = Builder(
            base,
            model,
            params,
            plan_kw,
            activations=c.activations,
            reduce_range=resolve_reduce_range(c.reduce_range),
            per_axis_ok=opset >= 13,
        )
        qmodel, kept = build(set(sites)), list(sites)
        details = self._details(plan_kw, smooth_info)
        if ctx.budget is not None and c.fallback:
            qmodel, kept, fb_notes = self._fallback(model, build, sites, qmodel, ctx, details)
            notes += fb_notes
        details["counts"] = dict(build.inserter.counts)
        notes += build.inserter.notes + plan_notes[:20]
        if not kept:
            return PassResult(False, 0, notes, details=details)
        return PassResult(True, len(kept), notes, sites=kept, details=details, model=qmodel)

    # --------------------------------------------------------------------------------------

    def _plan(
        self, graph: gs.Graph, plan_kw: dict[str, Any], ctx: PassContext
    ) -> tuple[list[str], list[str], list[str]]:
        """(site keys, tensors to calibrate, why candidates stay float) over the main graph
        and every If/Loop/Scan body (body sites are keyed ``<scope>::<node>``)."""
        exclude = set(self.config.exclude)
        sites: list[str] = []
        tensors: set[str] = set()
        notes: list[str] = []
        for scope, g in scope_graphs(graph):
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
            notes += [f"in {scope}: {n}" if scope else n for n in plan.notes]
        return sites, sorted(tensors), notes

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

    def _prepare(
        self, model: onnx.ModelProto, ctx: PassContext, notes: list[str]
    ) -> tuple[onnx.ModelProto, dict[str, int]]:
        """The model to quantize: shapes inferred, initializers read through Identity, nodes
        named, MatMul inputs smoothed if asked. Returns (model, smoothing summary)."""
        try:
            inferred = with_inferred_shapes(model)
        except Exception as e:
            logger.debug("shape inference failed: %s", e)
            inferred = model
        base = _named(_resolve_const_identities(inferred, in_place=inferred is not model))
        del inferred
        if self.config.smooth is None:
            return base, {}
        return self._smooth(base, ctx, notes)

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

    def _details(self, plan_kw: dict[str, Any], smooth_info: dict[str, int]) -> dict[str, Any]:
        c = self.config
        return {
            "calibrator": str(make_calibrator(c.calibrator, c.percentile)),
            "activations": c.activations,
            "per_channel": plan_kw["per_channel"],
            "reduce_range": resolve_reduce_range(c.reduce_range),
            "counts": {},
            "float_nodes": [],
            "smoothing": smooth_info,
        }

    def _calibrate(
        self, base: onnx.ModelProto, tensors: list[str], ctx: PassContext
    ) -> dict[str, tuple[float, float]]:
        c = self.config
        probe, exposed = probe_model(base, tensors)
        outputs = list(dict.fromkeys(exposed.values()))
        kw = {"bins": c.bins, "batch": c.calib_batch, "dynamic_batch": _dynamic_batch(base)}
        if (
            ctx.parallel is not None
            and len(ctx.feeds.runs) >= PARALLEL_MIN_RUNS
            and not weights.is_mapped_model(probe)
        ):
            # workers elsewhere get the serialized probe (a mapped model's weights stay here)
            data = probe.SerializeToString()
            del probe
            stats = collect_stats_split(data, outputs, ctx.feeds.runs, ctx.parallel, **kw)
        else:
            stats = collect_stats(probe, outputs, ctx.feeds.runs, progress=ctx.progress, **kw)
            del probe
        cal = make_calibrator(c.calibrator, c.percentile)
        sym = c.activations == "int8-sym"
        by_tensor = {t: stats[out] for t, out in exposed.items()}
        return {t: cal.range(s, symmetric=sym) for t, s in by_tensor.items() if not s.empty}

    def _smooth(
        self, base: onnx.ModelProto, ctx: PassContext, notes: list[str]
    ) -> tuple[onnx.ModelProto, dict[str, int]]:
        """SmoothQuant-style smoothing of MatMul inputs (exact in float) before calibration."""
        c = self.config
        exclude = set(c.exclude)
        graph = to_graph(base)
        names = {
            n.name
            for n in graph.nodes
            if n.op == "MatMul"
            and n.name not in exclude
            and "MatMul" not in exclude
            and ctx.allow(n.name)
        }
        tensors = sorted(smooth_groups(graph, names))
        del graph
        if not tensors:
            notes.append("smooth: no MatMul with a constant 2-D weight")
            return base, {}
        runs = ctx.feeds.runs[: c.smooth_runs]
        probe, exposed = probe_model(base, tensors)
        x_max = channel_absmax(probe, tensors, runs, ctx.progress)
        del probe, exposed
        res = apply_smoothing(base, x_max, c.smooth, names)
        notes.extend(res.notes[:10])
        notes.append(
            f"smooth(alpha={c.smooth:g}): {res.matmuls} MatMuls over {res.groups} "
            f"inputs ({res.folded} folded into LayerNorm)"
        )
        return res.model, {"groups": res.groups, "matmuls": res.matmuls, "folded": res.folded}

    def _fallback(
        self,
        model: onnx.ModelProto,
        build: Builder,
        sites: list[str],
        qmodel: onnx.ModelProto,
        ctx: PassContext,
        details: dict[str, Any],
    ) -> tuple[onnx.ModelProto, list[str], list[str]]:
        """Return the most sensitive sites to float until ``ctx.budget`` holds.

        Returns (model, kept sites, notes); ``details`` gets one row per float site
        (``float_nodes``) and the steps tried (``candidates``, when there were several)."""
        from onnxopt.runner import Runner
        from onnxopt.verify import accuracy

        runner = ctx.runner if ctx.runner is not None else Runner()
        feeds = ctx.feeds.subset(self.config.fallback_runs)
        reference = runner.run(model, feeds)
        ref_acc = accuracy(reference, feeds.labels) if feeds.labels is not None else None
        judge = Judge(runner, feeds, reference, ctx.budget, ref_acc)
        if ctx.measure_candidates:  # the report's trade-off plot: time every step
            judge.timing_feed = feeds.runs[0]
        good, why = judge.check(qmodel, "all int8")
        if good:
            return qmodel, sites, []
        notes = [f"fully quantized model misses the budget ({why}); ranking sites"]
        sfeeds = ctx.feeds.subset(self.config.sensitivity_runs)
        sref = reference[: len(sfeeds)]
        if ctx.parallel is not None and len(sites) >= PARALLEL_MIN_SITES:
            ranking = rank_sites_split(build, sites, sfeeds, sref, ctx.parallel)
        else:
            ranking = rank_sites(build, sites, runner, sfeeds, sref, ctx.progress)
        res = search_fallback(build, sites, judge, ranking, ctx.progress)
        sq = dict(ranking)
        rows = [
            {
                "node": s,
                "sqnr_db": round(sq[s], 2),
                "why": f"sensitivity rank {i + 1}/{len(sites)} (SQNR {sq[s]:.1f} dB); "
                f"needed to meet the budget",
            }
            for i, s in enumerate(res.float_sites)
        ]
        for r in rows:
            notes.append(f"kept float: {r['node']}: {r['why']}")
        if not res.met:
            notes.append(res.reason)
        kept = [s for s in sites if s not in set(res.float_sites)]
        details["float_nodes"] = rows
        details["candidates"] = _steps(
            judge, model, ref_acc, len(res.float_sites) if res.met else None
        )
        return build(set(kept)), kept, notes


def _steps(
    judge: Judge, model: onnx.ModelProto, ref_acc: float | None, chosen: int | None
) -> list[dict[str, Any]]:
    """The fallback's steps as trade-off candidates (with the float input when timed); the
    chosen one is the step with ``chosen`` nodes in float."""
    from onnxopt.candidates import latency_or_none

    rows = [
        {**h, "chosen": chosen is not None and h["label"] == f"{chosen} in float"}
        for h in judge.history
    ]
    if judge.timing_feed is not None:
        latency = latency_or_none(model, judge.timing_feed, "float")
        rows.insert(
            0,
            {
                "label": "float (the input)",
                "ok": True,
                "cosine": 1.0,
                "accuracy": ref_acc,
                "latency_ms": latency,
                "chosen": False,
                "reference": True,
            },
        )
    return rows


class Builder:
    """Builds the quantized model for a set of enabled sites, on a fresh import of ``base``
    each time (the fallback builds many); ``inserter`` is the last build's, for the report.

    Args:
        base: the prepared float model (named nodes, smoothed).
        like: the model whose model-level fields the output keeps.
        ranges: calibrated range per tensor.
        plan_kw: keyword arguments of :func:`.placement.make_plan`.
    """

    def __init__(
        self,
        base: onnx.ModelProto,
        like: onnx.ModelProto,
        ranges: dict[str, tuple[float, float]],
        plan_kw: dict[str, Any],
        *,
        activations: str,
        reduce_range: bool,
        per_axis_ok: bool,
    ) -> None:
        self.base, self.like, self.ranges, self.plan_kw = base, like, ranges, plan_kw
        self.activations = activations
        self.reduce_range = reduce_range
        self.per_axis_ok = per_axis_ok
        self.inserter: Inserted | None = None

    def __call__(self, enabled: set[str]) -> onnx.ModelProto:
        g = to_graph(self.base)
        by_scope = scoped(enabled)
        self.inserter = Inserted()
        for scope, body in scope_graphs(g):
            if scope and not by_scope.get(scope):
                continue
            plan = make_plan(body, by_scope.get(scope, set()), **self.plan_kw)
            params = _group_params(plan, self.ranges, self.activations)
            ins = Inserter(
                body, plan, params, reduce_range=self.reduce_range, per_axis_ok=self.per_axis_ok
            )
            ins.apply()
            self.inserter.add(scope, ins)
        return to_model(g, like=self.like)


class Inserted:
    """What the Q/DQ insertion did over every scope: counts per kind, and notes."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.notes: list[str] = []

    def add(self, scope: str, ins: Inserter) -> None:
        for k, v in ins.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        self.notes += [f"in {scope}: {n}" if scope else n for n in ins.notes]


def _resolve_const_identities(model: onnx.ModelProto, *, in_place: bool) -> onnx.ModelProto:
    """Read initializers directly where ``Identity(initializer)`` aliases them (exact).

    The TorchScript exporter deduplicates equal weights (all-zero biases, LayerNorm γ = 1) into
    Identity nodes; seen through them, a bias Add looks like an activation Add and a MatMul
    weight like an activation. Identities whose output is a graph output, or that a subgraph
    might read, stay.
    """
    g = model.graph
    inits = {t.name for t in g.initializer}
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in g.node
        for a in n.attribute
    ):
        return model
    outs = {o.name for o in g.output}
    alias = {
        n.output[0]: n.input[0]
        for n in g.node
        if n.op_type == "Identity" and n.input and n.input[0] in inits and n.output[0] not in outs
    }
    if not alias:
        return model
    if not in_place:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        model, g = out, out.graph
    keep = [n for n in g.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        for i, x in enumerate(n.input):
            if x in alias:
                n.input[i] = alias[x]
    del g.node[:]
    g.node.extend(keep)
    vi = [v for v in g.value_info if v.name not in alias]
    del g.value_info[:]
    g.value_info.extend(vi)
    return model


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose nodes all have unique names (sites are keyed by node name)."""
    g = to_graph(model)
    node_names_unique(g)
    names = {n.name for n in g.nodes}
    if len(names) == len(model.graph.node) and all(
        n.name == m.name for n, m in zip(g.nodes, model.graph.node, strict=False)
    ):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for p, n in zip(out.graph.node, g.nodes, strict=False):
        p.name = n.name
    return out


def _dynamic_batch(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    for v in model.graph.input:
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            return False
    return True


def _group_params(
    plan: Plan, ranges: dict[str, tuple[float, float]], activations: str
) -> dict[int, QParams]:
    """Per group: the union of its members' ranges -> QParams; drop tensors without stats."""
    out: dict[int, QParams] = {}
    for gid, members in plan.members().items():
        rs = [ranges[m] for m in members if m in ranges]
        if not rs:
            for m in members:
                plan.group.pop(m, None)
            continue
        lo, hi = min(r[0] for r in rs), max(r[1] for r in rs)
        out[gid] = activation_params(lo, hi, activations)
    return out


def describe_params(p: QParams) -> str:
    return f"scale={p.scale:.6g} zp={p.zero_point} {np.dtype(p.dtype).name}"
